"""SIGINT and SIGTERM as one exception, so a command stops at once and cleans up.

Python turns SIGINT into KeyboardInterrupt, but SIGTERM kills a process without running its
``finally`` blocks, and libraries replace both handlers: Ray Tune catches SIGINT and returns
normally from ``fit`` (a search then carried on with a partial stage), ``ray.init`` makes
SIGTERM a ``sys.exit``. ``raising`` sets both signals to raise ``Interrupted`` (a
KeyboardInterrupt, which no ``except Exception`` swallows); the CLI runs every command in it.

A handler's exception is lost where Python ignores exceptions: a signal that lands in an
at-fork hook (DataLoader workers), a finalizer or a weakref callback prints "Exception
ignored" and the command carried on. ``check`` raises it again; the long loops (training
iterations, Tune's event loop) call it. ``deferred`` holds signals back from library code
that must not be stopped half-way: a Ctrl-C inside ``ray.init`` was lost in its at-fork
hooks, and the half-started core worker it left crashed the interpreter at exit (SIGSEGV).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from types import FrameType
from typing import Callable, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A command stopped by a signal; ``resume`` is the command that continues its work, if any."""

    def __init__(self, signum: int = signal.SIGINT, resume: str = ""):
        super().__init__(signum, resume)
        self.signum, self.resume = signum, resume

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a process a signal ended."""
        return 128 + self.signum


_received: list[int] = []  # the signals this process received, for ``stopped``


def _raise(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    raise Interrupted(signum)


def stopped(e: KeyboardInterrupt, resume: str = "") -> Interrupted:
    """``e`` as the ``Interrupted`` of the signal that raised it (libraries such as Ray re-raise
    a plain KeyboardInterrupt of their own), with the command that continues the work."""
    signum = e.signum if isinstance(e, Interrupted) else (_received[-1] if _received else signal.SIGINT)
    return Interrupted(signum, resume)


def check() -> None:
    """Raise ``Interrupted`` if a signal arrived whose exception was swallowed on its way."""
    if _received:
        raise Interrupted(_received[-1])


def _record(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)


@contextlib.contextmanager
def _handled_by(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    """Both signals go to ``handler`` in the block (in the main thread; elsewhere Python allows
    no handlers); the handlers before it come back after it, whatever the block installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, old in before.items():
            if old is not None:
                signal.signal(s, old)


@contextlib.contextmanager
def raising() -> Iterator[None]:
    """SIGINT and SIGTERM raise ``Interrupted`` in the block (a command run in-process, as the
    tests do, leaves its caller's handlers as they were)."""
    _received.clear()  # an earlier in-process command's signals are not this one's
    with _handled_by(_raise):
        yield


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """SIGINT and SIGTERM are only recorded in the block, and raised (``check``) after it."""
    with _handled_by(_record):
        yield
    check()
