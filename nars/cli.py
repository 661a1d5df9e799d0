"""The ``nars`` command: one sub-command group per module in ``nars.commands``.

User errors (``UserError``, bad arguments) print one line and exit with code 2; SIGINT and
SIGTERM stop a command with one line (and how to continue, where it can) and exit 128 + the
signal's number.
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning. On a CPU shared with other processes (Ray
# trials, a second job) spinning threads made 2-thread runs 4-17x slower and latency
# measurements useless (BENCHMARKS.md, model cost). Set before torch loads libgomp, which
# the commands below import; a value in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import sys
from typing import Sequence

from nars.commands import data as data_commands
from nars.commands import deploy as deploy_commands
from nars.commands import eval as eval_commands
from nars.commands import experiment as experiment_commands
from nars.commands import model as model_commands
from nars.commands import predict as predict_commands
from nars.commands import predictor as predictor_commands
from nars.commands import search as search_commands
from nars.commands import space as space_commands
from nars.commands import supernet as supernet_commands
from nars.commands import train as train_commands
from nars.commands import weights as weights_commands
from nars.errors import UserError
from nars.fileio import os_error_line
from nars.interrupts import Interrupted, raising, stopped

# Each module exposes ``register(subparsers)``; its parsers set ``run=`` via set_defaults.
COMMAND_MODULES = (
    model_commands, data_commands, train_commands, eval_commands, predict_commands, space_commands, predictor_commands,
    search_commands, experiment_commands, weights_commands, deploy_commands, supernet_commands,
)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="nars", description="Network Architecture Recipe Search and the FBNetV3IS segmentor.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with raising():
            return int(args.run(args) or 0)
    except UserError as e:
        print(f"nars {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk or permission error that no writer named (nars.fileio): still one line
        line = os_error_line(e)
        if line is None:
            raise
        print(f"nars {args.command}: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        stop = e if isinstance(e, Interrupted) else stopped(e)
        then = f"; continue with: {stop.resume}" if stop.resume else ""
        print(f"nars {args.command}: interrupted ({stop.name}){then}", file=sys.stderr)
        return stop.exit_code


if __name__ == "__main__":
    sys.exit(main())
