"""A full disk, a read-only or unwritable ``--out``: one line naming the file and what was being
written, exit code 2, no temporary file left; atomically written files honour the umask.

A full disk is simulated portably (root or not, no mounting): the command runs in a child
process whose file-size limit (RLIMIT_FSIZE) is below the file it must write, with SIGXFSZ
ignored, so the write fails with EFBIG as it fails with ENOSPC on a full disk.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from engine_helpers import TINY_TRAIN, data_overrides
from nars import fileio
from nars.cli import main
from nars.errors import UserError
from test_predict import _one_thread, setup  # noqa: F401  (shapes data, its config file, random weights)

FULL = "file too large for the file system or the file-size limit (ulimit -f)"
ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


def _python(code: str, args: list[str], cwd: Path, limit: int | None = None,
            umask: int | None = None) -> subprocess.CompletedProcess:
    """``code`` in a child Python (argv: ``args``), optionally with files limited to ``limit``
    bytes and with ``umask``; the child's environment is this one's (PYTHONPATH included)."""
    prelude = "import os, resource, signal, sys\n"
    if limit is not None:
        prelude += (f"signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
                    f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n")
    if umask is not None:
        prelude += f"os.umask({umask})\n"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", prelude + code, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _nars(args: list[str], cwd: Path, limit: int) -> subprocess.CompletedProcess:
    return _python("from nars.cli import main\nsys.exit(main(sys.argv[1:]))", args, cwd, limit)


def _error(result: subprocess.CompletedProcess) -> str:
    """The command's one error line: exit code 2, no traceback."""
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


def _hidden(folder: Path) -> list[str]:
    """Temporary files left behind (every atomic write's temporary file is hidden)."""
    return sorted(p.name for p in folder.rglob(".*"))


def test_train_on_a_full_disk_is_one_line_and_the_retry_runs(setup, tmp_path):
    root, shapes, _ = setup
    out = tmp_path / "run"
    args = ["train", "quick_shapes", *TINY_TRAIN, *data_overrides(shapes), "--out", str(out)]
    line = _error(_nars(args, tmp_path, limit=256 << 10))  # config and metrics fit, the checkpoint does not
    assert line == f"nars train: error: {out / 'model_final.pth'}: cannot write the checkpoint: {FULL}"
    assert _hidden(out) == [] and not (out / "model_final.pth").exists()
    assert main([*args, "--resume"]) == 0 and (out / "model_final.pth").is_file()


@pytest.mark.parametrize("case", ["under_a_file", "read_only"])
def test_train_into_an_unwritable_out_is_one_line(setup, tmp_path, capsys, case):
    root, shapes, _ = setup
    if case == "under_a_file":
        (tmp_path / "file").write_text("not a folder")
        out, reason = tmp_path / "file" / "run", "a part of the path is a file, not a folder"
    else:
        if ROOT:
            pytest.skip("root writes into read-only folders")
        (tmp_path / "locked").mkdir(mode=0o555)
        out, reason = tmp_path / "locked" / "run", "permission denied; choose a folder you can write to"
    args = ["train", "quick_shapes", *TINY_TRAIN, *data_overrides(shapes), "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"nars train: error: {out}: cannot write the run folder: {reason}"


def test_predict_on_a_full_disk_is_one_line_and_the_retry_runs(setup, tmp_path):
    root, shapes, weights = setup
    out = tmp_path / "pred"
    args = ["predict", str(root / "config.yaml"), "--weights", str(weights), str(shapes / "val"), "--out", str(out)]
    line = _error(_nars(args, tmp_path, limit=1024))  # an overlay PNG is larger
    assert line == f"nars predict: error: {out / '000000.png'}: cannot write the overlay: {FULL}"
    assert _hidden(out) == [] and list(out.iterdir()) == []
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png", "000002.png", "predictions.json"]


def test_deploy_on_a_full_disk_is_one_line(setup, tmp_path):
    root, _, weights = setup
    onnx = tmp_path / "model.onnx"
    args = ["deploy", str(root / "config.yaml"), "--weights", str(weights), "--onnx", str(onnx)]
    line = _error(_nars(args, tmp_path, limit=256 << 10))
    assert line == f"nars deploy: error: {onnx}: cannot write the ONNX model: {FULL}"
    assert _hidden(tmp_path) == [] and not onnx.exists()


def test_a_generated_dataset_under_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    assert main(["data", "shapes", str(tmp_path / "file" / "sub" / "shapes"), "--train", "1", "--val", "1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        f"nars data: error: {tmp_path / 'file' / 'sub'}: cannot write the dataset's parent folder: a part of the path "
        "is a file, not a folder")


def test_a_write_error_no_writer_named_is_still_one_line(monkeypatch, capsys):
    """The CLI's last resort: an OSError of the disk-full/permission kind that carries a path,
    raised where no code turned it into a UserError, is still one line (other OSErrors are bugs)."""
    from nars.commands import data

    def full_disk(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/somewhere/file")

    monkeypatch.setattr(data, "run_shapes", full_disk)
    assert main(["data", "shapes", "unused"]) == 2
    err = capsys.readouterr().err
    assert err == "nars data: error: /somewhere/file: No space left on device\n"

    def bug(args):
        raise OSError(errno.EBADF, "Bad file descriptor", "/somewhere/file")

    monkeypatch.setattr(data, "run_shapes", bug)
    with pytest.raises(OSError, match="Bad file descriptor"):
        main(["data", "shapes", "unused"])


def test_atomic_copy_on_a_full_disk_leaves_the_old_file_and_no_temporary(tmp_path):
    src, dst = tmp_path / "big.bin", tmp_path / "out" / "copy.bin"
    src.write_bytes(os.urandom(3 << 20))
    dst.parent.mkdir()
    dst.write_bytes(b"the earlier file")
    code = "from nars.fileio import atomic_copy\natomic_copy(sys.argv[1], sys.argv[2])"
    result = _python(code, [str(src), str(dst)], tmp_path, limit=1 << 20)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"nars.errors.UserError: {dst}: cannot write the copy of {src}: {FULL}")
    assert dst.read_bytes() == b"the earlier file" and _hidden(tmp_path) == []

    fileio.atomic_copy(src, dst)
    assert dst.read_bytes() == src.read_bytes() and _hidden(tmp_path) == []
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / 'file' / 'x.bin'}: cannot write the checkpoint: a "
                                                  "part of the path is a file, not a folder")):
        fileio.atomic_copy(src, tmp_path / "file" / "x.bin", "the checkpoint")


def test_atomic_writes_honour_the_umask(tmp_path):
    """0o022 gives 0644 (mkstemp made every file 0600, so a team could not share a run folder)."""
    def mode(path: Path, code: str, umask: int) -> str:
        result = _python(f"from nars import fileio\n{code}", [str(path)], tmp_path, umask=umask)
        assert result.returncode == 0, result.stderr
        return oct(path.stat().st_mode & 0o777)

    write = "fileio.atomic_write_text(sys.argv[1], 'x')"
    assert [mode(tmp_path / f"{m:o}.txt", write, m) for m in (0o022, 0o002, 0o077)] == ["0o644", "0o664", "0o600"]
    copy = "fileio.atomic_copy(sys.argv[1][:-5] + '.txt', sys.argv[1])"  # of 77.txt, which is 0600
    assert mode(tmp_path / "77.copy", copy, 0o022) == "0o644"
    assert _hidden(tmp_path) == []
