"""``nars predictor eval``: k-fold rank quality of each predictor, with and without pretraining."""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path
from typing import Any

from nars.errors import UserError
from predictor import METRICS, PREDICTORS, cross_validate, make_predictor, pretrain_encoder, proxy_data, read_table
from search_spaces import load_space


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("predictor", help="accuracy predictors").add_subparsers(dest="action", required=True)
    ev = group.add_parser("eval", help="k-fold Kendall tau, Spearman rho and MAE of each predictor on a table")
    ev.add_argument("table", help="CSV or parquet (a 'candidate' JSON column, or a column per parameter, and metrics), "
                    "or a search run folder (its measured trials)")
    ev.add_argument("--space", default="fbnetv3is_quick", help="the candidates' space (default fbnetv3is_quick)")
    ev.add_argument("--metrics", type=_names, default=list(METRICS), help="metric columns (default segm_AP,bbox_AP)")
    ev.add_argument("--models", type=_names, default=list(PREDICTORS), help=f"default {','.join(PREDICTORS)}")
    ev.add_argument("--folds", type=int, default=5, help="k of k-fold cross-validation (default 5)")
    ev.add_argument("--pretrain-samples", type=int, default=4096, help="candidates for proxy pretraining")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--json", action="store_true", help="a JSON list of {model, pretrained, metric, tau, rho, mae}")
    ev.set_defaults(run=run_eval)


def evaluate_table(args: argparse.Namespace) -> list[dict[str, Any]]:
    unknown = [m for m in args.models if m not in PREDICTORS]
    if unknown:
        raise UserError(f"unknown predictor {unknown[0]!r}; expected some of {', '.join(PREDICTORS)}")
    space = load_space(args.space)
    if Path(args.table).is_dir():  # a search run: its measured trials
        from nars.search.store import measured_trials

        table = measured_trials(args.table)
    else:
        table = args.table
    candidates, y = read_table(table, space, args.metrics, name=args.table)
    x = space.encode(candidates)
    encoder = pretrain_encoder(*proxy_data(space, args.pretrain_samples, args.seed), seed=args.seed)
    rows = []
    for model in args.models:
        for enc in (None, encoder):
            make = partial(make_predictor, model, space.arch_slice.stop, encoder=enc, seed=args.seed)
            scores = cross_validate(make, x, y, args.metrics, args.folds, args.seed)
            rows += [{"model": model, "pretrained": enc is not None, "metric": m, **s} for m, s in scores.items()]
    return rows


def run_eval(args: argparse.Namespace) -> int:
    rows = evaluate_table(args)
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'model':<7}{'pretrained':<12}{'metric':<10}{'tau':>7}{'rho':>7}{'MAE':>9}")
    for r in rows:
        print(f"{r['model']:<7}{'yes' if r['pretrained'] else 'no':<12}{r['metric']:<10}"
              f"{r['tau']:>7.3f}{r['rho']:>7.3f}{r['mae']:>9.4f}")
    return 0
