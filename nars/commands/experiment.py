"""``nars experiment new``: write an experiment for ``nars search`` derived from a COCO dataset."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from nars.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("experiment", help="experiment files for nars search").add_subparsers(
        dest="action", required=True)
    new = group.add_parser("new", help="an experiment whose input sizes, anchors, detections and budgets "
                                       "follow a COCO dataset and this machine's cores")
    for split in ("train", "val"):
        new.add_argument(f"--{split}", nargs=2, required=True, metavar=("JSON", "IMAGES"),
                         help=f"the {split} COCO instances JSON and its image folder")
    new.add_argument("--parent", metavar="CKPT", default="",
                     help="the checkpoint candidates start from (a path, a NARS run folder or a named checkpoint)")
    new.add_argument("--parent-arch", metavar="ARCH", default="",
                     help="the parent's MODEL.FBNET_V2.ARCH when its file does not record it")
    new.add_argument("--max-mflops", type=float, metavar="X", help="constraints.max_mflops (default: no limit)")
    new.add_argument("--max-params", type=int, metavar="N", help="constraints.max_params (default: no limit)")
    new.add_argument("--name", help="the experiment's name (default: the --out file's stem)")
    new.add_argument("--cpus", type=int, default=os.cpu_count() or 1,
                     help="cores to plan for (default: this machine's, %(default)s)")
    new.add_argument("--out", required=True, metavar="FILE", help="the experiment YAML to write")
    new.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    new.add_argument("--allow-outside-images", action="store_true",
                     help="accept file_names that leave IMAGES (../, absolute); pins DATASETS.ALLOW_OUTSIDE_IMAGES")
    new.set_defaults(run=run_new)


def run_new(args: argparse.Namespace) -> int:
    from nars.fileio import atomic_write_text, make_dirs
    from nars.search.new_experiment import Split, new_experiment

    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"{out}: is a folder; --out names the YAML file to write")
    if out.exists() and not args.force:
        raise UserError(f"{out}: exists; choose another --out, or add --force to overwrite it")
    if args.parent_arch and not args.parent:
        raise UserError("--parent-arch names the architecture of --parent; give --parent too")
    if args.cpus < 1:
        raise UserError(f"--cpus must be >= 1, got {args.cpus}")
    parent = str(Path(args.parent).resolve()) if args.parent and Path(args.parent).exists() else args.parent
    text = new_experiment(Split(*map(Path, args.train)), Split(*map(Path, args.val)), cpus=args.cpus,
                          name=args.name or out.stem, parent=parent, parent_arch=args.parent_arch,
                          max_mflops=args.max_mflops, max_params=args.max_params,
                          allow_outside_images=args.allow_outside_images)
    make_dirs(out.parent, "the experiment's folder")
    atomic_write_text(out, text, "the experiment")
    print(f"wrote {out}; check it, then: nars search {out}")
    return 0
