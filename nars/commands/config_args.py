"""``CONFIG [options] [KEY VALUE ...]`` for commands that take a config, as detectron2's opts.

argparse stops at the first override and hands everything after CONFIG to it, options
included; ``parse_late_options`` takes the options back out, so they may come before
CONFIG, right after it, or among the pairs.
"""

from __future__ import annotations

import argparse
from typing import Callable

from nars.config import CONFIG_DIR

AddOptions = Callable[[argparse.ArgumentParser], None]


def add_config_arguments(parser: argparse.ArgumentParser, add_options: AddOptions) -> None:
    shipped = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    parser.add_argument("config", metavar="CONFIG", help=f"a config file, or a shipped config's name ({shipped})")
    add_options(parser)
    parser.add_argument("overrides", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="config overrides, e.g. SOLVER.MAX_ITER 100 MODEL.DEVICE cuda")
    parser.set_defaults(add_options=add_options, late_parser=lambda: type(parser)(prog=parser.prog, add_help=False))


def parse_late_options(args: argparse.Namespace) -> argparse.Namespace:
    """Options found among the overrides (after CONFIG) into ``args``; the rest stay overrides."""
    late = args.late_parser()  # the command's parser class: the CLI's one-line errors
    args.add_options(late)
    for action in late._actions:  # only options given late replace those given early
        action.default = argparse.SUPPRESS
    late.add_argument("overrides", nargs="*")
    found = late.parse_intermixed_args(args.overrides)
    vars(args).update(vars(found))
    return args
