"""``nars supernet train | eval | extract``: train a weight-sharing supernet once, measure its
sub-networks zero-shot, take one out as a plain FBNetV3IS."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from nars.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("supernet", help="a weight-sharing supernet: train once, measure thousands of "
                                            "sub-networks zero-shot, extract any").add_subparsers(
        dest="action", required=True)
    train = group.add_parser("train", help="train the supernet of an experiment's space (its supernet: section)")
    _train_options(train)
    train.add_argument("overrides", nargs=argparse.REMAINDER, metavar="[EXPERIMENT] [KEY VALUE ...]",
                       help="the experiment (default quickstart) and dotted overrides, e.g. supernet.max_iter 4")
    train.set_defaults(run=run_train, add_options=_train_options,
                       late_parser=lambda: type(train)(prog=train.prog, add_help=False))

    evaluate = group.add_parser("eval", help="zero-shot COCO AP of sub-networks sampled from the space "
                                             "(batch norms recalibrated; cached; Ray tasks)")
    evaluate.add_argument("supernet", metavar="DIR")
    evaluate.add_argument("--sample", type=int, default=16, metavar="N", help="architectures to evaluate (default 16)")
    evaluate.add_argument("--seed", type=int, default=0, metavar="S", help="which ones (default 0)")
    evaluate.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    evaluate.add_argument("--num-cpus", type=int, default=None, metavar="N",
                          help="Ray's CPUs for the local evaluation (default: the experiment's ray.num_cpus)")
    evaluate.set_defaults(run=run_eval)

    extract = group.add_parser("extract", help="a sub-network as OUT/config.yaml + OUT/model_final.pth, with its "
                                               "recalibrated batch norms (nars eval gives its zero-shot AP)")
    extract.add_argument("supernet", metavar="DIR")
    extract.add_argument("--id", required=True, help="a sub-network id (see nars supernet eval)")
    extract.add_argument("--out", required=True, metavar="OUT", help="a new or empty folder")
    extract.set_defaults(run=run_extract)


def _train_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", metavar="DIR", help="the supernet folder (required); new or empty unless --resume")
    parser.add_argument("--resume", action="store_true",
                        help="continue DIR's supernet from its last checkpoint, with the experiment it started with")
    parser.add_argument("--num-workers", type=int, default=1, metavar="N",
                        help="training processes on this machine (gloo on CPU, nccl on CUDA)")


def _process(exp: dict, out: str, resume: bool) -> None:
    """What each training process runs (module level: spawned processes import it)."""
    from nars.engine import distributed as comm
    from nars.engine.console import setup_logging
    from nars.supernet.setup import build
    from nars.supernet.train import train_supernet

    setup_logging(comm.get_rank())  # INFO on the main process, warnings elsewhere
    train_supernet(build(exp, Path(out)), Path(out), resume=resume)


def run_train(args: argparse.Namespace) -> int:
    from nars.commands.config_args import parse_late_options
    from nars.engine import distributed as comm
    from nars.engine.console import setup_logging
    from nars.interrupts import stopped
    from nars.search.driver import first_difference
    from nars.search.experiment import load_experiment
    from nars.supernet.setup import META_FILE, build
    from nars.supernet.train import check_new, stored_experiment

    args = parse_late_options(args)
    if not args.out:
        raise UserError("--out DIR is required: the supernet folder")
    out = Path(args.out).resolve()
    positional = list(args.overrides)
    experiment = positional.pop(0) if len(positional) % 2 else None
    if args.resume and (out / META_FILE).is_file():
        exp = stored_experiment(out)
        if experiment or positional:
            given = load_experiment(experiment, positional)
            key = first_difference({k: v for k, v in given.items() if k not in ("workdir",)},
                                   {k: v for k, v in exp.items() if k not in ("workdir",)})
            if key is not None:
                raise UserError(f"--resume {out}: the supernet started with another experiment ({key} differs); "
                                "give no experiment or overrides with --resume")
    else:
        exp = load_experiment(experiment, positional)
        exp["workdir"] = os.getcwd()
        check_new(out, args.resume)  # before the experiment's data is made
    setup_logging()
    net = build(exp, out)  # checked here, before N processes start
    device = comm.device_for(net.search.base["MODEL"]["DEVICE"])
    try:
        comm.launch(_process, (exp, str(out), args.resume), args.num_workers, device)
    except KeyboardInterrupt as e:
        raise stopped(e, f"nars supernet train --out {out} --resume") from None
    if os.environ.get("RANK", "0") == "0":
        print(f"supernet trained: {out}/model_final.pth; next: nars supernet eval {out} --sample 32")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from nars.engine.console import setup_logging
    from nars.supernet.zero_shot import evaluate_sampled

    if args.sample < 1:
        raise UserError(f"--sample must be >= 1, got {args.sample}")
    setup_logging()
    rows = evaluate_sampled(Path(args.supernet), args.sample, args.seed, num_cpus=args.num_cpus)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'id':<12}  {'MFLOPs':>8}  {'params':>9}  {'bbox AP':>7}  {'segm AP':>7}")
    for r in sorted(rows, key=lambda r: r["mflops"]):
        print(f"{r['id']:<12}  {r['mflops']:>8.1f}  {r['params']:>9d}  {r['bbox_AP']:>7.4f}  {r['segm_AP']:>7.4f}")
    print(f"next: nars supernet extract {args.supernet} --id {rows[0]['id']} --out subnet")
    return 0


def run_extract(args: argparse.Namespace) -> int:
    from nars.engine.console import setup_logging
    from nars.supernet.zero_shot import extract

    setup_logging()
    result = extract(Path(args.supernet), args.id, Path(args.out))
    print(f"wrote {args.out}: config.yaml + model_final.pth (zero-shot segm AP {result['segm_AP']:.4f}, "
          f"{result['mflops']:.1f} MFLOPs); check: nars eval {args.out}/config.yaml --weights "
          f"{args.out}/model_final.pth")
    return 0
