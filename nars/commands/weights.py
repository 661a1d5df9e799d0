"""``nars weights download NAME``: fetch a d2go checkpoint, verified; ``nars weights list``."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from nars.engine.console import setup_logging
from nars.model.weights import NAMED_CHECKPOINTS, WEIGHTS_DIR_ENV, weights_dir
from nars.model.zoo import DEFAULT_TIMEOUT, MODEL_ZOO_URL_ENV, download, host, lookup, zoo_url


def _names() -> str:
    return ", ".join(repr(c.name) for c in NAMED_CHECKPOINTS.values())


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("weights", help="d2go's released checkpoints: list them, download one").add_subparsers(
        dest="action", required=True)
    dl = group.add_parser("download", help=f"fetch a named checkpoint from d2go's model zoo ({MODEL_ZOO_URL_ENV} "
                                           "for a mirror), check that it loads whole, keep it in the weights folder")
    dl.add_argument("name", metavar="NAME", help=f"a named checkpoint ({_names()}; any case)")
    dl.add_argument("--dir", metavar="D", help=f"the folder to keep it in (default ${WEIGHTS_DIR_ENV}, "
                                               "else ~/.cache/nars/weights)")
    dl.add_argument("--force", action="store_true", help="download again even if the file is there")
    dl.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S",
                    help=f"give up after S seconds without data (default {DEFAULT_TIMEOUT:g})")
    dl.set_defaults(run=run_download)
    ls = group.add_parser("list", help="the named checkpoints, their COCO AP, and which are in the weights folder")
    ls.add_argument("--dir", metavar="D", help=f"the weights folder to look in (default ${WEIGHTS_DIR_ENV})")
    ls.add_argument("--json", action="store_true", help="print a JSON list, one object per checkpoint")
    ls.set_defaults(run=run_list)


def _folder(args: argparse.Namespace) -> Path:
    return Path(args.dir).expanduser() if args.dir else weights_dir()


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def run_download(args: argparse.Namespace) -> int:
    setup_logging()
    entry, folder = lookup(args.name), _folder(args)
    result = download(entry.name, folder, force=args.force, timeout=args.timeout)
    if not result.fetched:
        print(f"{result.path}: {entry.name!r} is already there ({_mb(result.size)}); nothing to do "
              "(--force downloads it again)")
        return 0
    env = "" if folder.resolve() == weights_dir().resolve() else f" with {WEIGHTS_DIR_ENV}={folder}"
    away = f" (redirected to {result.source})" if host(result.source) != host(result.url) else ""
    print(f"{result.path}: {entry.name!r} from {result.url}{away} ({_mb(result.size)}), loads whole into {entry.arch} "
          f"(80 classes); use it{env} as MODEL.WEIGHTS '{entry.name}'")
    return 0


def checkpoints(folder: Path) -> list[dict[str, Any]]:
    rows = []
    for entry in NAMED_CHECKPOINTS.values():
        path = folder / entry.filename
        rows.append({
            "name": entry.name, "arch": entry.arch, "d2go_config": entry.d2go_config, "url": zoo_url(entry),
            "box_ap": entry.box_ap, "mask_ap": entry.mask_ap, "path": str(path), "present": path.is_file(),
            "size": path.stat().st_size if path.is_file() else None,
        })
    return rows


def run_list(args: argparse.Namespace) -> int:
    folder = _folder(args)
    rows = checkpoints(folder)
    dir_option = f" --dir {args.dir}" if args.dir else ""
    if args.json:
        print(json.dumps(rows))
        return 0
    where = "--dir" if args.dir else WEIGHTS_DIR_ENV if os.environ.get(WEIGHTS_DIR_ENV) else "default"
    print(f"weights folder {folder} ({where}); COCO val2017 AP from d2go's MODEL_ZOO.md")
    print(f"{'name':<25}{'arch':<18}{'box AP':>7}{'mask AP':>8}  file")
    for row in rows:
        state = f"present  {row['path']} ({_mb(row['size'])})" if row["present"] else \
            f"absent   nars weights download '{row['name']}'{dir_option}"
        print(f"{row['name']:<25}{row['arch']:<18}{row['box_ap']:>7.2f}{row['mask_ap']:>8.2f}  {state}")
        print(f"{'':<25}{row['url']}")
    return 0
