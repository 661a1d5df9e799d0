"""What a run shows on the terminal: log lines and one progress bar, from the main process only.

Log records go through ``tqdm.write`` so that they never break the bar; other processes log
warnings only.
"""

from __future__ import annotations

import logging
import sys

from tqdm import tqdm


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never raise
            self.handleError(record)


def setup_logging(rank: int = 0) -> None:
    """``nars`` loggers to stderr: INFO on the main process, WARNING elsewhere."""
    logger = logging.getLogger("nars")
    logger.handlers[:] = []
    handler = _TqdmHandler()
    prefix = "" if rank == 0 else f"[rank {rank}] "
    handler.setFormatter(logging.Formatter(f"{prefix}%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.propagate = False


def progress_bar(total: int, initial: int, enabled: bool, desc: str = "train") -> tqdm:
    """A bar over iterations: tqdm's count, rate and ETA; the loop adds losses and lr."""
    return tqdm(total=total, initial=initial, desc=desc, unit="it", disable=not enabled, dynamic_ncols=True,
                mininterval=1.0, file=sys.stderr)
