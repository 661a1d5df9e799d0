"""SIGINT and SIGTERM as one exception, so a command stops at once and cleans up.

Python turns SIGINT into KeyboardInterrupt, but SIGTERM kills a process without running its
``finally`` blocks, and libraries replace both handlers: Ray Tune catches SIGINT and returns
normally from ``fit`` (a search then carried on with a partial stage), ``ray.init`` makes
SIGTERM a ``sys.exit``. ``install`` sets both signals to raise ``Interrupted`` (a
KeyboardInterrupt, which no ``except Exception`` swallows); the CLI runs every command
``raising``, and the Ray session installs them again after ``ray.init``.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from types import FrameType
from typing import Iterator

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


def install() -> None:
    """SIGINT and SIGTERM raise ``Interrupted`` in the main thread (elsewhere: left as they are)."""
    if threading.current_thread() is threading.main_thread():
        for s in SIGNALS:
            signal.signal(s, _raise)


@contextlib.contextmanager
def raising() -> Iterator[None]:
    """``install`` for the block; the handlers before it come back after (a command run
    in-process, as the tests do, leaves its caller's handlers as they were)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.getsignal(s) for s in SIGNALS}
    install()
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
