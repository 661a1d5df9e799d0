"""``nars weights download`` / ``list`` against a model-zoo mirror on 127.0.0.1, never the internet."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from nars.cli import main
from nars.model.weights import NAMED_CHECKPOINTS, WEIGHTS_DIR_ENV
from nars.model.zoo import MODEL_ZOO_URL_ENV
from test_weights import d2go_state_dict

DSMASK = NAMED_CHECKPOINTS["fbnetv3a-dsmask-c4 coco"]
C4 = NAMED_CHECKPOINTS["fbnetv3a-c4 coco"]


class _Handler(SimpleHTTPRequestHandler):
    """Serves the zoo folder; ``lies[path] = n`` claims n bytes more than the file has,
    ``slow[path] = s`` waits s seconds before answering, ``moved[path] = url`` redirects
    there, ``trickle[path] = s`` sends the headers and 64 kB, then a kilobyte every s seconds."""

    lies: dict[str, int]
    slow: dict[str, float]
    moved: dict[str, str]
    trickle: dict[str, float]

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        time.sleep(self.slow.get(self.path, 0))
        if self.path in self.moved:
            self.send_response(302)
            self.send_header("Location", self.moved[self.path])
            self.end_headers()
            return None
        if self.path in self.trickle:
            return self._trickle(Path(self.directory, self.path.lstrip("/")).read_bytes(), self.trickle[self.path])
        if self.path not in self.lies:
            return super().do_GET()
        body = Path(self.directory, self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body) + self.lies[self.path]))
        self.end_headers()
        self.wfile.write(body)  # HTTP/1.0: the connection closes here, short of the length

    def _trickle(self, body: bytes, pause: float) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body[: 1 << 16])
            for start in range(1 << 16, len(body), 1024):
                time.sleep(pause)
                self.wfile.write(body[start : start + 1024])
        except OSError:  # the client went away
            pass


def _serve(root: Path) -> tuple[ThreadingHTTPServer, SimpleNamespace]:
    """An HTTP server for ``root`` on 127.0.0.1 (a free port), and its handler's settings."""
    handler = type("Handler", (_Handler,), {"lies": {}, "slow": {}, "moved": {}, "trickle": {}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    return server, SimpleNamespace(base=base, lies=handler.lies, slow=handler.slow, moved=handler.moved,
                                   trickle=handler.trickle)


@pytest.fixture
def zoo(tmp_path, monkeypatch):
    """A model-zoo mirror laid out as ``<id>/<file>``, with NARS_MODEL_ZOO_URL and
    NARS_WEIGHTS_DIR pointing at it and at an empty (not yet created) weights folder."""
    root, weights = tmp_path / "zoo", tmp_path / "weights"
    root.mkdir()
    server, settings = _serve(root)
    monkeypatch.setenv(MODEL_ZOO_URL_ENV, settings.base)
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(weights))
    yield SimpleNamespace(root=root, weights=weights, **vars(settings))
    server.shutdown()
    server.server_close()


def _publish(zoo, entry, obj) -> Path:
    path = zoo.root / entry.zoo_path
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def _d2go_checkpoint(arch: str) -> dict:
    """fvcore's layout with d2go's key names (``proposal_generator.rpn_head.*``) and an EMA copy."""
    state = d2go_state_dict(arch)
    return {"model": state, "ema_state": {k: v + 1 for k, v in state.items()}, "iteration": 499999}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.exists() else {}


def _error(capsys) -> str:
    """The CLI's error: the last stderr line, one line, no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_download_is_verified_then_loads_by_name(zoo, capsys):
    served = _publish(zoo, DSMASK, _d2go_checkpoint("FBNetV3_A_dsmask"))
    info = ["model", "info", "FBNetV3_A_dsmask", "--weights", "FBNetV3a-DSMask-C4 COCO", "--json"]
    assert main(info) == 2
    assert "nars weights download 'FBNetV3a-DSMask-C4 COCO'" in _error(capsys)

    assert main(["weights", "download", "fbnetv3a-dsmask-c4 coco"]) == 0
    out = capsys.readouterr().out
    final = zoo.weights / DSMASK.filename
    assert f"{final}: 'FBNetV3a-DSMask-C4 COCO' from {zoo.base}/268412271/model_0499999.pth" in out
    assert "loads whole into FBNetV3_A_dsmask" in out
    assert _files(zoo.weights) == {DSMASK.filename: served.read_bytes()}  # no temporary file left

    assert main(info) == 0
    assert json.loads(capsys.readouterr().out)["weights"] == {
        "loaded": 362, "missing": [], "unexpected": [], "mismatched": [], "reinitialized": []}

    mtime = final.stat().st_mtime_ns
    assert main(["weights", "download", "FBNetV3a-DSMask-C4 COCO"]) == 0
    assert "already there" in capsys.readouterr().out and final.stat().st_mtime_ns == mtime
    assert main(["weights", "list", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["FBNetV3a-DSMask-C4 COCO"]["present"] and rows["FBNetV3a-DSMask-C4 COCO"]["path"] == str(final)
    assert not rows["FBNetV3a-C4 COCO"]["present"]
    assert rows["FBNetV3a-C4 COCO"]["url"] == f"{zoo.base}/268421013/model_final.pth"


FAILURES = {
    "truncated": r"model_0499999\.pth: truncated download, \d+ of \d+ bytes",
    "cut": r"model_0499999\.pth: not a readable PyTorch checkpoint",
    "404": r"model_0499999\.pth: HTTP 404 .*no such file in the model zoo",
    "wrong_arch": r"model_0499999\.pth does not fit .*FBNetV3_A_dsmask, 80 classes\): tensors \d+ with another shape",
    "wrong_ema": r"model_0499999\.pth \(its EMA weights\) does not fit",
}


@pytest.mark.parametrize("case", FAILURES)
def test_failed_download_keeps_nothing_and_leaves_a_good_file(zoo, capsys, case):
    if case == "wrong_arch":
        _publish(zoo, DSMASK, _d2go_checkpoint("FBNetV3_A"))
    elif case == "wrong_ema":
        _publish(zoo, DSMASK, {**_d2go_checkpoint("FBNetV3_A_dsmask"), "ema_state": d2go_state_dict("FBNetV3_A")})
    elif case != "404":
        path = _publish(zoo, DSMASK, _d2go_checkpoint("FBNetV3_A_dsmask"))
        if case == "truncated":
            zoo.lies[f"/{DSMASK.zoo_path}"] = 1000
        else:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert main(["weights", "download", "FBNetV3a-DSMask-C4 COCO"]) == 2
    line = _error(capsys)
    assert line.startswith(f"nars weights: error: {zoo.base}/") and re.search(FAILURES[case], line), line
    assert _files(zoo.weights) == {}
    zoo.weights.mkdir(exist_ok=True)
    (zoo.weights / DSMASK.filename).write_bytes(b"the earlier file")
    assert main(["weights", "download", "FBNetV3a-DSMask-C4 COCO", "--force"]) == 2
    assert _files(zoo.weights) == {DSMASK.filename: b"the earlier file"}


def test_offline_is_one_line_from_the_command(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, MODEL_ZOO_URL_ENV: f"http://127.0.0.1:{port}/", WEIGHTS_DIR_ENV: str(tmp_path / "w")}
    result = subprocess.run([sys.executable, "-m", "nars.cli", "weights", "download", "FBNetV3a-DSMask-C4 COCO"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"nars weights: error: cannot reach http://127.0.0.1:{port}/268412271/model_0499999.pth "
        f"([Errno 111] Connection refused): offline? set {MODEL_ZOO_URL_ENV} to a mirror, "
        f"or save the file as {tmp_path / 'w' / DSMASK.filename} yourself")
    assert not (tmp_path / "w").exists()


def test_a_server_that_does_not_answer_times_out(zoo, capsys):
    _publish(zoo, DSMASK, _d2go_checkpoint("FBNetV3_A_dsmask"))
    zoo.slow[f"/{DSMASK.zoo_path}"] = 3
    assert main(["weights", "download", "FBNetV3a-DSMask-C4 COCO", "--timeout", "0.3"]) == 2
    assert "model_0499999.pth (no answer in 0.3 s): offline?" in _error(capsys) and _files(zoo.weights) == {}


def test_file_mirror_and_dir_for_the_c4_checkpoint(zoo, tmp_path, monkeypatch, capsys):
    served = _publish(zoo, C4, _d2go_checkpoint("FBNetV3_A"))
    monkeypatch.setenv(MODEL_ZOO_URL_ENV, zoo.root.as_uri())
    other = tmp_path / "elsewhere"
    assert main(["weights", "download", "FBNetV3a-C4 COCO", "--dir", str(other)]) == 0
    out = capsys.readouterr().out
    assert "loads whole into FBNetV3_A " in out and f"with {WEIGHTS_DIR_ENV}={other} as MODEL.WEIGHTS" in out
    assert _files(other) == {C4.filename: served.read_bytes()}


def test_list_shows_present_and_absent(zoo, capsys):
    zoo.weights.mkdir()
    (zoo.weights / C4.filename).write_bytes(b"x" * 2_000_000)
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert f"weights folder {zoo.weights} ({WEIGHTS_DIR_ENV})" in out
    assert f"present  {zoo.weights / C4.filename} (2.0 MB)" in out
    assert "absent   nars weights download 'FBNetV3a-DSMask-C4 COCO'" in out
    assert f"{zoo.base}/268412271/model_0499999.pth" in out and "21.76   19.97" in out


def test_bad_name_and_bad_mirror_url(zoo, monkeypatch, capsys):
    assert main(["weights", "download", "FBNetV3G-FPN COCO"]) == 2
    assert "no named checkpoint 'FBNetV3G-FPN COCO'; known: 'FBNetV3a-DSMask-C4 COCO'" in _error(capsys)
    monkeypatch.setenv(MODEL_ZOO_URL_ENV, "/srv/d2go-mirror")
    assert main(["weights", "download", "FBNetV3a-DSMask-C4 COCO"]) == 2
    assert f"{MODEL_ZOO_URL_ENV}='/srv/d2go-mirror': not an http://" in _error(capsys)


def test_a_redirect_to_another_host_is_followed_and_said(zoo, tmp_path, capsys):
    """The zoo's server (one port) redirects to a storage server (another port: another host)."""
    storage_root = tmp_path / "storage"
    served = _publish(SimpleNamespace(root=storage_root), DSMASK, _d2go_checkpoint("FBNetV3_A_dsmask"))
    storage, settings = _serve(storage_root)
    try:
        target = f"{settings.base}/{DSMASK.zoo_path}"
        zoo.moved[f"/{DSMASK.zoo_path}"] = target
        assert main(["weights", "download", "FBNetV3a-DSMask-C4 COCO"]) == 0
    finally:
        storage.shutdown()
        storage.server_close()
    out, err = capsys.readouterr()
    zoo_host, storage_host = zoo.base.removeprefix("http://"), settings.base.removeprefix("http://")
    assert (f"{zoo.base}/{DSMASK.zoo_path}: the model zoo's host {zoo_host} redirects to another host, "
            f"{storage_host} ({target}); following it") in err
    assert f"from {zoo.base}/{DSMASK.zoo_path} (redirected to {target})" in out
    assert _files(zoo.weights) == {DSMASK.filename: served.read_bytes()}


def test_an_unsafe_checkpoint_is_refused_without_torchs_advice(zoo, capsys):
    """torch's refusal suggests weights_only=False (or allowlisting the class): never repeated."""
    _publish(zoo, DSMASK, {**_d2go_checkpoint("FBNetV3_A_dsmask"), "args": argparse.Namespace(lr=0.1)})
    assert main(["weights", "download", "FBNetV3a-DSMask-C4 COCO"]) == 2
    line = _error(capsys)
    assert line == (f"nars weights: error: {zoo.base}/{DSMASK.zoo_path}: not a readable PyTorch checkpoint (not a "
                    "valid or safe one: Unsupported global: GLOBAL argparse.Namespace; NARS loads only tensors and "
                    "plain containers, never code)"), line
    assert not re.search(r"weights.only|trust|safe_globals|\x1b", line) and _files(zoo.weights) == {}


def test_sigterm_during_a_download_leaves_no_part_file(zoo, tmp_path):
    """A download the test started itself (its own Popen), from a server sending 1 kB at a time."""
    _publish(zoo, DSMASK, _d2go_checkpoint("FBNetV3_A_dsmask"))
    zoo.trickle[f"/{DSMASK.zoo_path}"] = 0.05
    proc = subprocess.Popen([sys.executable, "-m", "nars.cli", "weights", "download", "FBNetV3a-DSMask-C4 COCO"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not any(p.name.endswith(".part") for p in _folder_files(zoo.weights)):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err
    assert _files(zoo.weights) == {}


def _folder_files(folder: Path) -> list[Path]:
    return list(folder.iterdir()) if folder.is_dir() else []
