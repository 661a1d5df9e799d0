"""``nars search``, ``nars pareto``, ``nars report`` and ``nars export``: run a search, read it, take its best."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from nars.commands.config_args import parse_late_options
from nars.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    search = sub.add_parser("search", help="run (or resume) a NARS architecture + recipe search")
    _search_options(search)
    search.add_argument("overrides", nargs=argparse.REMAINDER, metavar="[EXPERIMENT] [KEY VALUE ...]",
                        help="an experiment file or shipped name (default: quickstart), then overrides such as "
                             "stage1.rounds 2")
    search.set_defaults(run=run_search, add_options=_search_options,
                        late_parser=lambda: type(search)(prog=search.prog, add_help=False))

    pareto = sub.add_parser("pareto", help="a run's measured and predicted Pareto fronts")
    pareto.add_argument("run_dir", metavar="RUN")
    pareto.add_argument("--json", action="store_true", help="print the measured front as JSON")
    pareto.add_argument("--plot", metavar="FILE", help="write a PNG: all trials, the front, the reference")
    pareto.add_argument("--x", choices=("mflops", "latency"), default="mflops",
                        help="the cost the front and the plot use (latency: measured where measured, else predicted)")
    pareto.set_defaults(run=run_pareto)

    report = sub.add_parser("report", help="a run as one self-contained HTML page (fronts, trials, curves, "
                                           "predictor fit, winner); also fills RUN/tensorboard")
    report.add_argument("run_dir", metavar="RUN")
    report.add_argument("--out", required=True, metavar="FILE", help="the page to write, e.g. report.html")
    report.add_argument("--watch", type=int, metavar="SECONDS",
                        help="rewrite the page every SECONDS until the run finishes (and reload it that often)")
    report.set_defaults(run=run_report)

    export = sub.add_parser("export", help="a verified trial as config.yaml + model_final.pth + summary.json")
    export.add_argument("run_dir", metavar="RUN")
    which = export.add_mutually_exclusive_group()
    which.add_argument("--id", help="a candidate or trial id (see nars pareto)")
    which.add_argument("--best", action="store_true", help="the best verified segm AP (the default)")
    which.add_argument("--max-mflops", type=float, metavar="X", help="the best verified segm AP within X MFLOPs")
    which.add_argument("--front", action="store_true",
                       help="every member of the measured Pareto front (verified trials and the reference) as "
                            "DIR/<id>/ with model.onnx, timed together; the table as DIR/family.csv and family.md")
    export.add_argument("--out", required=True, metavar="DIR")
    export.add_argument("--onnx", action="store_true",
                        help="also DIR/model.onnx for onnxruntime, checked against PyTorch (as nars deploy)")
    export.set_defaults(run=run_export)


def _search_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", metavar="RUN", help="a new run folder (default: runs/NAME-N)")
    parser.add_argument("--resume", metavar="RUN", help="complete an interrupted run")
    parser.add_argument("--ray-address", metavar="ADDR", help="an existing Ray cluster (default: a local one)")
    parser.add_argument("--warm-start", metavar="RUN", action="append",
                        help="an earlier run on the same space and dataset whose measured trials the predictor starts "
                             "from (repeatable; sets stage1.warm_start)")


def run_search(args: argparse.Namespace) -> int:
    from nars.engine.console import setup_logging
    from nars.search.driver import search

    args = parse_late_options(args)  # options may also come among the overrides
    positional = list(args.overrides)
    experiment = positional.pop(0) if len(positional) % 2 else None
    if args.resume and (experiment or positional or args.warm_start):
        raise UserError("--resume RUN continues that run's own experiment; give no EXPERIMENT, overrides or "
                        "--warm-start with it")
    if args.warm_start:  # the last override: over the experiment file's list
        positional += ["stage1.warm_start", json.dumps(args.warm_start)]
    if args.resume and args.out:
        raise UserError("give either --out (a new run) or --resume (an existing one), not both")
    setup_logging()
    logging.getLogger("nars").setLevel(logging.INFO)
    run_dir = search(experiment, positional, out=args.out, resume=args.resume, ray_address=args.ray_address)
    print(f"search finished: {run_dir}")
    _print_front(run_dir)
    print(f"next: nars pareto {run_dir} --plot front.png; nars export {run_dir} --best --out exported")
    return 0


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _print_front(run_dir: Path, x: str = "mflops") -> None:
    from nars.search.fronts import fronts

    f = fronts(run_dir, x)
    rows = [("measured", r) for r in f["measured"]] + [(k, f[k]) for k in ("reference", "tuned") if f[k]]
    latency = any(r["latency_ms"] is not None for _, r in rows)
    head = f"{'pred ms':>9}{'meas ms':>9}" if latency else ""
    print(f"{'id':<14}{'segm AP':>9}{'bbox AP':>9}{'MFLOPs':>10}{head}{'params':>11}{'iters':>7}  choices")
    for kind, r in rows:
        choices = " ".join(f"{k}={v}" for k, v in r["choices"].items())
        tag = {"reference": " (reference)", "tuned": " (tuned parent: the recipe stage's best)"}.get(kind, "")
        tag += f" (segm AP: mean of {r['seeds']} seeds)" if r["seeds"] > 1 else ""
        ms = f"{_ms(r['latency_ms']):>9}{_ms(r['measured_latency_ms']):>9}" if latency else ""
        print(f"{r['id']:<14}{_fmt(r['segm_AP']):>9}{_fmt(r['bbox_AP']):>9}{r['mflops']:>10.1f}{ms}{r['params']:>11,}"
              f"{r['iterations']:>7}  {choices}{tag}")
    if latency:
        print(f"latencies: {f['latency_engine']} (latency.engine), this machine's CPU")
    if f["predicted"]:
        print(f"predicted front (stage 2): {len(f['predicted'])} candidates, predicted segm AP "
              f"{min(p['pred_segm_AP'] for p in f['predicted']):.3f}-{max(p['pred_segm_AP'] for p in f['predicted']):.3f}")


def run_pareto(args: argparse.Namespace) -> int:
    from nars.search.fronts import fronts, plot

    run_dir = Path(args.run_dir)
    if args.json:
        f = fronts(run_dir, args.x)
        keys = ("id", "segm_AP", "bbox_AP", "mflops", "latency_ms", "measured_latency_ms", "params", "iterations",
                "choices")
        print(json.dumps([{k: r[k] for k in keys} for r in f["measured"]]))
    else:
        _print_front(run_dir, args.x)
    if args.plot:
        plot(run_dir, Path(args.plot), args.x)
        if not args.json:
            print(f"plot: {args.plot}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    import time

    from nars.search.html_report import REFRESH_S, write
    from nars.search.tensorboard_log import TENSORBOARD_DIR, log_run

    run_dir, out = Path(args.run_dir), Path(args.out)
    if args.watch is not None and args.watch < 1:
        raise UserError(f"--watch {args.watch}: give a number of seconds, at least 1")
    while True:
        summary = write(run_dir, out, args.watch or REFRESH_S)
        logged = log_run(run_dir)  # trials TensorBoard does not show yet (or whose row changed since)
        counts = ", ".join(f"{n} {s}" for s, n in sorted(summary["counts"].items()))
        print(f"{time.strftime('%H:%M:%S')} {out}: {summary['trials']} trials ({counts or 'none yet'}), "
              f"state {summary['state']}" + (f"; {logged} written to {run_dir / TENSORBOARD_DIR}" if logged else ""),
              flush=True)
        if args.watch is None or summary["state"] == "finished":
            return 0
        time.sleep(args.watch)


def run_export(args: argparse.Namespace) -> int:
    from nars.search.export import FAMILY_CSV, FAMILY_MD, export, export_family, family_markdown

    out = Path(args.out)
    if args.front:
        from nars.engine.console import setup_logging

        setup_logging()  # a progress line per member: each takes an ONNX export and its check
        rows = export_family(Path(args.run_dir), out)
        print(family_markdown(rows, Path(args.run_dir)), end="")
        print(f"exported the {len(rows)} front member(s) to {out}/<id>/ (table: {out / FAMILY_CSV}, "
              f"{out / FAMILY_MD}); evaluate one: nars eval {out}/<id>/config.yaml "
              f"--weights {out}/<id>/model_final.pth")
        return 0
    summary = export(Path(args.run_dir), out, args.id, args.max_mflops, onnx=args.onnx)
    m = summary["metrics"]
    print(f"exported {summary['id']} (segm AP {_fmt(m.get('segm_AP'))}, bbox AP {_fmt(m.get('bbox_AP'))}, "
          f"{summary['mflops']:.1f} MFLOPs, {summary['params']:,} params) to {out}")
    if args.onnx:
        from nars.deploy.onnx import Parity
        from nars.search.export import ONNX_FILE

        print(f"{out / ONNX_FILE}: {Parity(**summary['onnx']).summary()}")
    print(f"retrain: nars train {out / 'config.yaml'} --out {out / 'retrain'}; "
          f"evaluate: nars eval {out / 'config.yaml'} --weights {out / 'model_final.pth'}")
    return 0
