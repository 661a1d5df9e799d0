"""``nars weights download``: fetch one of d2go's model-zoo checkpoints, only when asked.

The file comes from ``$NARS_MODEL_ZOO_URL/<model id>/<file>`` (default: d2go's own storage,
``MODEL_ZOO_STORAGE_PREFIX`` in d2go; see ``NamedCheckpoint`` for the paths and where they
were checked), the same relative path as d2go's, so a mirror is a copy of that layout (an
``http(s)://`` or ``file://`` URL). It streams into a hidden temporary file in the weights
folder, is checked against Content-Length, read with ``torch.load(weights_only=True)`` and
loaded into the architecture its name implies, every tensor with its shape (the EMA copy
too, when there is one); only then is it renamed to the file name ``resolve_weights``
expects. Any failure is a one-line ``UserError`` naming the URL, and leaves no file behind
and an earlier good file as it was. A redirect to another host is followed, with a warning
naming both (``_SayWhenRedirectedAway`` says why).
"""

from __future__ import annotations

import http.client
import logging
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Mapping

from tqdm import tqdm

from nars.config import load_config
from nars.engine.loading import check_fit
from nars.errors import UserError
from nars.fileio import atomic_writer, make_dirs
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
    source: str = ""  # the URL the bytes came from, after redirects ("": not fetched)


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


def host(url: str) -> str:
    """``host:port`` of an http(s) URL (the scheme's port when none is given); "" for file://."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return f"{parts.hostname}:{port}" if parts.hostname else ""


class _SayWhenRedirectedAway(urllib.request.HTTPRedirectHandler):
    """Follows redirects as urllib does, with a warning for each one that leaves the zoo's host.

    Followed, not refused: mirrors and CDNs redirect to storage hosts by design (GitHub
    releases, S3 regions), and a redirect cannot make NARS run code or keep a wrong file, as
    the file is kept only when it loads with ``weights_only=True`` into its architecture,
    every tensor's shape checked. d2go publishes no checksums, so where the bytes come from is
    said (here, and in ``Download.source``)."""

    def __init__(self, origin: str):
        super().__init__()
        self.origin, self.seen = origin, {origin}

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        target = host(newurl)
        if new is not None and target not in self.seen:
            self.seen.add(target)
            logger.warning("%s: the model zoo's host %s redirects to another host, %s (%s); following it",
                           req.full_url, self.origin, target, newurl)
        return new


def _open(url: str, timeout: float, final: Path) -> http.client.HTTPResponse:
    request = urllib.request.Request(url, headers={"User-Agent": "nars"})
    try:
        return urllib.request.build_opener(_SayWhenRedirectedAway(host(url))).open(request, timeout=timeout)
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
        source = response.geturl()

        def check(tmp: Path) -> None:
            logger.info("checking that it loads whole into %s", entry.arch)
            verify(tmp, entry, url)

        make_dirs(folder, f"the weights folder (--dir or {WEIGHTS_DIR_ENV} chooses another)")
        # a hidden .part file: removed on any error, Ctrl-C and SIGTERM (nars.interrupts) included
        with atomic_writer(final, f"the download of {entry.name!r}", suffix=".part", check=check) as out:
            size = _stream(response, url, out, progress)
    return Download(final, url, fetched=True, size=size, source=source)
