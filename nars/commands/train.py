"""``nars train CONFIG [--out DIR] [--resume] [--num-workers N] [KEY VALUE ...]``."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from nars.commands.config_args import add_config_arguments, parse_late_options
from nars.config import load_config
from nars.engine import distributed as comm
from nars.engine.console import setup_logging
from nars.engine.trainer import CONFIG_FILE, EVAL_FILE, prepare, train
from nars.interrupts import stopped


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", metavar="DIR", help="the run folder (default: OUTPUT_DIR); new or empty unless --resume")
    parser.add_argument("--resume", action="store_true",
                        help="continue DIR's run from its last checkpoint (model, optimizer, scheduler, EMA, "
                             "iteration, random state)")
    parser.add_argument("--num-workers", type=int, default=1, metavar="N",
                        help="training processes on this machine (gloo on CPU, nccl on CUDA); SOLVER.IMS_PER_BATCH "
                             "is split over them. Not DATALOADER.NUM_WORKERS, the loader processes of each")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("train", help="train FBNetV3IS on DATASETS.TRAIN, evaluating on DATASETS.TEST")
    add_config_arguments(parser, _options)
    parser.set_defaults(run=run_train)


def _process(cfg: dict[str, Any], out: str, resume: bool) -> None:
    """What each training process runs (module level: spawned processes import it)."""
    setup_logging(comm.get_rank())
    train(cfg, out, resume=resume)


def run_train(args: argparse.Namespace) -> int:
    args = parse_late_options(args)
    cfg = load_config(args.config, args.overrides)
    out = Path(args.out or cfg["OUTPUT_DIR"])
    device = comm.device_for(cfg["MODEL"]["DEVICE"])
    if args.num_workers > 1 and not comm.launched_by_torchrun():
        # fail here rather than in N workers; on the CPU, so this process holds no GPU memory
        prepare({**cfg, "MODEL": {**cfg["MODEL"], "DEVICE": "cpu"}}, out, resume=args.resume,
                world_size=args.num_workers)
    setup_logging()  # after that check, so that its dataset summaries are not shown twice
    try:
        comm.launch(_process, (cfg, str(out), args.resume), args.num_workers, device)
    except KeyboardInterrupt as e:  # the run continues from its last checkpoint with the config it saved
        saved = out / CONFIG_FILE
        raise stopped(e, f"nars train {saved} --out {out} --resume" if saved.is_file() else "") from None
    if os.environ.get("RANK", "0") != "0":  # torchrun: the main process reports
        return 0
    eval_file = out / EVAL_FILE
    if eval_file.is_file():
        metrics = json.loads(eval_file.read_text(encoding="utf-8"))
        print(f"{out}: model_final.pth; bbox AP {_ap(metrics['bbox'])}, segm AP {_ap(metrics['segm'])} ({eval_file})")
    else:
        print(f"{out}: model_final.pth (no DATASETS.TEST, not evaluated)")
    return 0


def _ap(values: dict[str, float | None]) -> str:
    return "n/a" if values["AP"] is None else f"{values['AP']:.3f}"
