"""Atomic file writes: a reader (or a crash) never sees half a file, and a full disk or a
permission error is one line naming the file and what was being written.

Each write goes to a hidden temporary file in the destination's folder, is flushed to disk, and
is renamed over the destination (``os.replace`` is atomic on POSIX and Windows). On any error,
Ctrl-C included, the temporary file is removed: nothing is left that blocks a retry.

The temporary file is created with mode 0o666, as ``open(path, "w")`` creates a file, so the
kernel applies the umask (and a folder's default ACL) and a team can share a run folder.
``tempfile.mkstemp`` makes every file 0600; chmod-ing afterwards would need the umask, which
``os.umask`` can only read by setting it (a race with other threads' file creation) and which
would override a default ACL.
"""

from __future__ import annotations

import errno
import io
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from nars.errors import UserError

# OSErrors that mean "this path cannot be written here", not a bug: what the user can do.
WRITE_ERRNOS: dict[int, str] = {
    errno.ENOSPC: "no space left on the disk; free some and run again",
    errno.EFBIG: "file too large for the file system or the file-size limit (ulimit -f)",
    errno.EROFS: "read-only file system; choose a writable folder",
    errno.EACCES: "permission denied; choose a folder you can write to",
    errno.EPERM: "operation not permitted; choose a folder you can write to",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "a folder is in the way",
}
if hasattr(errno, "EDQUOT"):  # not on Windows
    WRITE_ERRNOS[errno.EDQUOT] = "disk quota exceeded; free some space and run again"
_CHUNK = 1 << 20


def write_error(path: str | Path, what: str, error: OSError) -> UserError | None:
    """``error`` as the one-line UserError for writing ``what`` to ``path``; None when it is
    not a disk-full, read-only or permission error (a bug keeps its traceback)."""
    reason = WRITE_ERRNOS.get(error.errno or 0)
    return None if reason is None else UserError(f"{path}: cannot write {what}: {reason}")


def os_error_line(error: OSError) -> str | None:
    """The CLI's last resort for a disk-full, read-only or permission error that no writer
    turned into a UserError: ``path: strerror``; None for other errors and those without a path."""
    if error.errno not in WRITE_ERRNOS or not error.filename:
        return None
    names = " -> ".join(str(name) for name in (error.filename, error.filename2) if name)
    return f"{names}: {error.strerror}"


@contextmanager
def writing(path: str | Path, what: str) -> Iterator[None]:
    """Inside the block, a full disk or a permission error is a UserError naming ``path``
    (for writes that do not go through the helpers below: event files, open appenders)."""
    try:
        yield
    except OSError as e:
        error = write_error(path, what, e)
        if error is None:
            raise
        raise error from None


def make_dirs(path: str | Path, what: str) -> Path:
    """``path`` and its parents, created where missing; errors name ``path`` and ``what``."""
    path = Path(path)
    with writing(path, what):
        path.mkdir(parents=True, exist_ok=True)
    return path


def _create_temp(path: Path, suffix: str) -> tuple[int, Path]:
    """A new hidden file beside ``path``, opened for writing with mode 0o666 (less the umask)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for name in ("O_NOFOLLOW", "O_CLOEXEC", "O_BINARY"):
        flags |= getattr(os, name, 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{suffix}"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path))


@contextmanager
def atomic_writer(path: str | Path, what: str = "the file", *, suffix: str = ".tmp",
                  check: Callable[[Path], None] | None = None) -> Iterator[BinaryIO]:
    """A binary file whose bytes replace ``path`` when the block ends without error, after
    ``check(temporary path)`` (which raises to refuse them); on any error the temporary file is
    removed and ``path`` stays as it was. Disk-full and permission errors, the block's writes
    included, are one UserError naming ``path`` and ``what``."""
    path = Path(path)
    tmp: Path | None = None
    try:
        with writing(path, what):
            fd, tmp = _create_temp(path, suffix)
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            if check is not None:
                check(tmp)
            os.replace(tmp, path)
            tmp = None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes, what: str = "the file") -> None:
    with atomic_writer(path, what) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str, what: str = "the file") -> None:
    atomic_write_bytes(path, text.encode("utf-8"), what)


def atomic_copy(src: str | Path, dst: str | Path, what: str | None = None) -> None:
    """``src``'s bytes as ``dst``, atomically (a full disk leaves neither a partial ``dst``
    nor a temporary file); the mode follows the umask, not ``src``."""
    with open(src, "rb") as source, atomic_writer(dst, what or f"the copy of {src}") as out:
        shutil.copyfileobj(source, out, _CHUNK)


def atomic_torch_save(path: str | Path, obj: Any, what: str = "the checkpoint") -> None:
    """``torch.save`` into memory, then one atomic write."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue(), what)


def atomic_save_png(path: str | Path, fig: Any, what: str = "the plot") -> None:
    """A matplotlib figure as a PNG, rendered into memory, then one atomic write; closes it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue(), what)


@contextmanager
def staged_folder(path: str | Path, what: str, *, beside: str | Path | None = None,
                  replace: bool = False) -> Iterator[Path]:
    """A new hidden folder (in ``beside``, default ``path``'s parent) that the block fills and
    that becomes ``path`` when the block ends without error: ``path`` must then be absent or an
    empty folder, or with ``replace`` is removed first. On any error the folder is removed, so
    nothing half-written is left to block a retry; its mode is 0o777 less the umask, as any
    folder's. Disk-full and permission errors are one UserError naming ``path`` and ``what``."""
    path = Path(path)
    tmp = Path(beside if beside is not None else path.parent) / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        with writing(path, what):
            tmp.mkdir(0o777)
            yield tmp
            if replace:
                shutil.rmtree(path, ignore_errors=True)
            elif path.is_dir():
                path.rmdir()  # empty, or an OSError: never over anything
            tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
