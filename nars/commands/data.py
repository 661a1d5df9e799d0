"""``nars data shapes``: make the synthetic dataset; ``nars data coins``: the one made of a real
photo's coins; ``nars data info``: check a COCO dataset
and print what a detector's settings depend on (sizes of images and boxes, objects per image)."""

from __future__ import annotations

import argparse
import json

from nars.data import coins
from nars.data.coco import CocoInstances
from nars.data.shapes import CATEGORIES, DOMAINS, generate_shapes
from nars.data.stats import DatasetStats, Spread, dataset_stats


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("data", help="datasets: make the synthetic one, check COCO ones").add_subparsers(
        dest="action", required=True)
    shapes = group.add_parser("shapes", help="write the synthetic shapes dataset (COCO format) to OUT")
    shapes.add_argument("out", metavar="OUT", help="a new or empty folder: gets train.json, train/, val.json, val/")
    shapes.add_argument("--train", type=int, default=300, help="training images (default 300)")
    shapes.add_argument("--val", type=int, default=50, help="validation images (default 50)")
    shapes.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    shapes.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    shapes.add_argument("--domain", choices=sorted(DOMAINS), default="shapes",
                        help="how the images look: shapes (1-4 large shapes on colour blobs, the default) or cells "
                             "(up to 10 small shapes on a dark noisy background): a second domain to fine-tune on")
    shapes.set_defaults(run=run_shapes)
    coin = group.add_parser("coins", help="write the coins dataset (COCO format) to OUT: scikit-image's coins photo, "
                                          "10-40 coins per image, labelled by watershed")
    coin.add_argument("out", metavar="OUT", help="a new or empty folder: gets train.json, train/, val.json, val/")
    coin.add_argument("--train", type=int, default=200, help="training images (default 200)")
    coin.add_argument("--val", type=int, default=50, help="validation images (default 50)")
    coin.add_argument("--size", type=int, default=400, help=f"image side in pixels (default 400, at least "
                                                            f"{coins.MIN_SIZE})")
    coin.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    coin.set_defaults(run=run_coins)
    info = group.add_parser("info", help="a COCO dataset's image and box sizes, objects per image, classes, "
                                         "and (with IMAGES) what training would use")
    info.add_argument("json_path", metavar="JSON", help="COCO instances JSON")
    info.add_argument("images", metavar="IMAGES", nargs="?",
                      help="the image folder its file_names are relative to; given, the dataset is also loaded "
                           "as training reads it (missing images, dropped boxes and masks)")
    info.add_argument("--json", action="store_true", help="print one JSON object (the statistics under 'stats')")
    info.add_argument("--allow-outside-images", action="store_true",
                      help="accept file_names that leave IMAGES (../, absolute), as DATASETS.ALLOW_OUTSIDE_IMAGES does")
    info.set_defaults(run=run_info)


def run_shapes(args: argparse.Namespace) -> int:
    written = generate_shapes(args.out, train=args.train, val=args.val, size=args.size, seed=args.seed,
                              domain=args.domain)
    what = f"{args.train} train + {args.val} val {args.domain} images of {args.size}x{args.size}, seed {args.seed}"
    return _report(args.out, written, what, f"classes {', '.join(CATEGORIES)}", len(CATEGORIES))


def _report(out: str, written: bool, what: str, classes: str, num_classes: int) -> int:
    """What a generator command did, and the config keys that use its dataset."""
    if not written:
        print(f"{out} already holds this dataset ({what}); nothing to do")
        return 0
    print(f"wrote {out}: {what}, {classes}")
    print(f"use: DATASETS.TRAIN.JSON {out}/train.json DATASETS.TRAIN.IMAGES {out}/train "
          f"DATASETS.TEST.JSON {out}/val.json DATASETS.TEST.IMAGES {out}/val "
          f"MODEL.ROI_HEADS.NUM_CLASSES {num_classes}")
    return 0


def run_coins(args: argparse.Namespace) -> int:
    written = coins.generate_coins(args.out, train=args.train, val=args.val, size=args.size, seed=args.seed)
    what = f"{args.train} train + {args.val} val coin images of {args.size}x{args.size}, seed {args.seed}"
    return _report(args.out, written, what, f"class {', '.join(coins.CATEGORIES)}", len(coins.CATEGORIES))


def run_info(args: argparse.Namespace) -> int:
    dataset = (CocoInstances(args.json_path, args.images, allow_outside_images=args.allow_outside_images)
               if args.images else None)
    stats = dataset_stats(args.json_path)
    info = {"stats": stats.as_dict()}
    if dataset is not None:
        info = {"images": len(dataset), **dataset.stats, "classes": dataset.class_counts(), **info}
    if args.json:
        print(json.dumps(info))
        return 0
    if dataset is None:
        print(f"{args.json_path}: {stats.images} images, {stats.instances} instances of {len(stats.classes)} classes "
              "(give IMAGES to load it as training does)")
        for name, count in stats.classes.items():
            print(f"      {name:<20}{count:>8}")
    else:
        _print_loaded(args.json_path, dataset)
    _print_stats(stats)
    return 0


def _print_loaded(json_path: str, dataset: CocoInstances) -> None:
    """What training keeps of the dataset."""
    s = dataset.stats
    print(f"{json_path}: {len(dataset)} images ({s['empty_images']} without instances), "
          f"{s['instances']} instances of {dataset.num_classes} classes")
    print(f"ignored {s['crowd']} crowd regions; dropped {s['degenerate_boxes']} degenerate boxes "
          f"and {s['empty_masks']} empty masks")
    for label, (name, count) in enumerate(dataset.class_counts().items(), start=1):
        print(f"  {label:>3} {name:<20}{count:>8}  (category id {dataset.label_to_category_id[label]})")


def _spread(s: Spread) -> str:
    return f"{s.min:g} / {s.median:g} / {s.max:g}"


def _print_stats(s: DatasetStats) -> None:
    """The numbers input sizes, anchors and detections per image follow (all non-crowd annotations)."""
    print(f"image size, min / median / max px: width {_spread(s.width)}, height {_spread(s.height)}, "
          f"shorter side {_spread(s.shorter_side)}")
    print(f"objects per image: mean {s.instances_per_image_mean:.1f}, median {s.instances_per_image.median:g}, "
          f"max {s.instances_per_image.max:g}")
    if s.box_size:
        sizes = ", ".join(f"{q}% {v:.1f}" for q, v in s.box_size.items())
        print(f"box size sqrt(w*h), px of the original image: {sizes}")
