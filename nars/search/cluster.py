"""The search's Ray session: a local Ray by default, or an existing cluster (``ray.address``)."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Mapping

from nars.errors import UserError
from nars.interrupts import deferred


def check_reachable(address: str) -> None:
    """Fail fast on a cluster address nothing answers at (ray.init would wait for minutes)."""
    if not address or address == "auto":
        return
    host, _, port = address.split("://")[-1].rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except (OSError, ValueError) as e:
        raise UserError(f"ray.address {address}: nothing answers there ({e.strerror or e})") from None


def storage_path(ray_cfg: Mapping[str, Any], run_dir: Path) -> str:
    """Where Tune keeps the trials' checkpoints: ``ray.storage_path`` (a folder every node
    mounts at the same path, or a pyarrow URI such as s3://bucket/nars), else the run's ``ray/``."""
    value = ray_cfg["storage_path"]
    if "://" in value:
        return value
    return os.path.abspath(value or run_dir / "ray")


class ray_session:
    """``ray.init`` for the search (local by default, or an existing cluster), shut down after."""

    def __init__(self, ray_cfg: Mapping[str, Any]):
        self.cfg = ray_cfg

    def __enter__(self) -> "ray_session":
        import ray

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no per-run banner tables: NARS prints its own progress
        # rung checkpoints of short trials come seconds apart: Tune's snapshot-frequency advice is noise here
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        # Tune's own SIGINT handler ends fit() normally, and the search carried on with a partial
        # stage; without it Ctrl-C raises out of fit() (nars.interrupts), and nothing later runs
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        address = self.cfg["address"] or None
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if address is None:
            temp = Path(tempfile.gettempdir()) / f"nars-ray-{os.getpid()}"  # unix socket paths must stay short
            # trials exchange little data: a small object store keeps a laptop's memory for training
            kwargs.update(num_cpus=self.cfg["num_cpus"], _temp_dir=str(temp), object_store_memory=200 * 2**20)
        try:
            with deferred():  # ray.init also makes SIGTERM a sys.exit: nars.interrupts' handlers come back after it
                ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"ray.address {address or 'local'}: cannot connect ({first})") from None
        except KeyboardInterrupt:  # a signal during the start: Ray is up, and goes down before the command stops
            ray.shutdown()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        import ray

        ray.shutdown()
