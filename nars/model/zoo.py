"""``nars weights download``: fetch one of d2go's model-zoo checkpoints, only when asked.

The file comes from ``$NARS_MODEL_ZOO_URL/<model id>/<file>`` (default: d2go's own storage,
``MODEL_ZOO_STORAGE_PREFIX`` in d2go; see ``NamedCheckpoint`` for the paths and where they
were checked), the same relative path as d2go's, so a mirror is a copy of that layout (an
``http(s)://`` or ``file://`` URL). It streams into a hidden temporary file in the weights
folder, is checked against Content-Length, read with ``torch.load(weights_only=True)`` and
loaded into the architecture its name implies, every tensor with its shape (the EMA copy
too, when there is one); only then is it renamed to the file name ``resolve_weights``
expects. Any failure is a one-line ``UserError`` naming the URL, and leaves no file behind
and an earlier good file as it was.
"""

from __future__ import annotations

import http.client
import logging
import os
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Mapping

from tqdm import tqdm

from nars.config import load_config
from nars.engine.loading import check_fit
from nars.errors import UserError
from nars.model.fbnetv3is import build_model
from nars.model.weights import (
    NAMED_CHECKPOINTS,
    WEIGHTS_DIR_ENV,
    NamedCheckpoint,
    load_state,
    named_checkpoint,
    read_checkpoint,
    state_dict_of,
    weights_dir,
)

MODEL_ZOO_URL_ENV = "NARS_MODEL_ZOO_URL"
DEFAULT_MODEL_ZOO_URL = "https://mobile-cv.s3-us-west-2.amazonaws.com/d2go/models"
DEFAULT_TIMEOUT = 30.0  # seconds without a byte (connecting, or between reads)
_CHUNK = 1 << 20

logger = logging.getLogger(__name__)


@dataclass
class Download:
    """What ``download`` did: ``fetched`` is False when the file was already there."""

    path: Path
    url: str
    fetched: bool
    size: int


def lookup(name: str) -> NamedCheckpoint:
    entry = named_checkpoint(name)
    if entry is None:
        known = ", ".join(repr(c.name) for c in NAMED_CHECKPOINTS.values())
        raise UserError(f"no named checkpoint {name!r}; known: {known} (see `nars weights list`)")
    return entry


def zoo_url(entry: NamedCheckpoint) -> str:
    """``$NARS_MODEL_ZOO_URL/<id>/<file>``, or d2go's storage when the variable is unset."""
    base = os.environ.get(MODEL_ZOO_URL_ENV, "").strip() or DEFAULT_MODEL_ZOO_URL
    if urllib.parse.urlsplit(base).scheme not in ("http", "https", "file"):
        raise UserError(f"{MODEL_ZOO_URL_ENV}={base!r}: not an http://, https:// or file:// URL")
    return f"{base.rstrip('/')}/{entry.zoo_path}"


def verify(path: Path, entry: NamedCheckpoint, source: str) -> None:
    """Refuse ``path`` unless it loads whole into ``entry.arch`` with 80 classes (and so does
    its EMA copy, if any); errors name ``source``."""
    try:
        ckpt = read_checkpoint(path)
        model = build_model(load_config(None, ["MODEL.FBNET_V2.ARCH", entry.arch, "MODEL.FBNET_V2.NORM", "BN"]))
        ema = ckpt.get("ema_state")
        for use_ema in (False, True) if isinstance(ema, Mapping) and ema else (False,):
            with warnings.catch_warnings():  # another class count is refused below, not warned about
                warnings.simplefilter("ignore")
                report = load_state(model, state_dict_of(ckpt, use_ema, path))
            check_fit(report, model, f"{source}{' (its EMA weights)' if use_ema else ''}", complete=True)
    except UserError as e:
        raise UserError(str(e).replace(str(path), source)) from None


def _open(url: str, timeout: float, final: Path) -> http.client.HTTPResponse:
    request = urllib.request.Request(url, headers={"User-Agent": "nars"})
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        hint = f" (no such file in the model zoo; is {MODEL_ZOO_URL_ENV} right?)" if e.code == 404 else ""
        raise UserError(f"{url}: HTTP {e.code} {e.reason}{hint}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", None) or e
        if isinstance(reason, TimeoutError):
            reason = f"no answer in {timeout:g} s"
        raise UserError(f"cannot reach {url} ({reason}): offline? set {MODEL_ZOO_URL_ENV} to a mirror, "
                        f"or save the file as {final} yourself") from None


def _stream(response: http.client.HTTPResponse, url: str, out: BinaryIO, progress: bool | None) -> int:
    """``response``'s body into ``out``; the number of bytes, checked against Content-Length
    when the server gives it."""
    length = response.headers.get("Content-Length")
    expected = int(length) if length and length.isdigit() else None
    size = 0
    with tqdm(total=expected, desc=Path(urllib.parse.urlsplit(url).path).name, unit="B", unit_scale=True,
              unit_divisor=1024, disable=None if progress is None else not progress, file=sys.stderr,
              dynamic_ncols=True, mininterval=0.5) as bar:
        while True:
            try:
                chunk = response.read(_CHUNK)
            except (OSError, http.client.HTTPException) as e:
                raise UserError(f"{url}: download broke off after {size} bytes ({e or type(e).__name__})") from None
            if not chunk:
                break
            out.write(chunk)
            size += len(chunk)
            bar.update(len(chunk))
    if expected is not None and size != expected:
        raise UserError(f"{url}: truncated download, {size} of {expected} bytes")
    return size


def download(name: str, folder: str | Path | None = None, force: bool = False, timeout: float = DEFAULT_TIMEOUT,
             progress: bool | None = None) -> Download:
    """Fetch the named checkpoint into ``folder`` (default ``$NARS_WEIGHTS_DIR``), verified.

    A file already there is left alone unless ``force``; ``progress=None`` shows the bar
    when stderr is a terminal. Nothing is written before the server answers.
    """
    entry = lookup(name)
    url = zoo_url(entry)
    folder = Path(folder).expanduser() if folder is not None else weights_dir()
    final = folder / entry.filename
    if final.is_file() and not force:
        return Download(final, url, fetched=False, size=final.stat().st_size)
    logger.info("downloading %s", url)
    with _open(url, timeout, final) as response:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{entry.filename}.", suffix=".part", dir=folder)
        except OSError as e:
            raise UserError(f"{folder}: cannot write the weights folder ({e.strerror or e}); "
                            f"choose another with --dir or {WEIGHTS_DIR_ENV}") from None
        try:
            try:
                with os.fdopen(fd, "wb") as out:
                    size = _stream(response, url, out, progress)
                    out.flush()
                    os.fsync(out.fileno())
            except OSError as e:  # the network's errors are UserErrors already: this is the disk
                raise UserError(f"{folder}: cannot write {entry.filename} ({e.strerror or e})") from None
            logger.info("checking that it loads whole into %s", entry.arch)
            verify(Path(tmp), entry, url)
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return Download(final, url, fetched=True, size=size)
