"""Write split lists and image-level labels for a dataset folder.

Outputs, in ``--out`` (default ``<root>/splits``):

* ``<split>.txt``: one image id per line.
  VOC / custom: train, val, test copied from ImageSets/Segmentation (those present), and
  train_aug = every image with a mask in SegmentationClassAug minus val (10,582 images for the
  standard VOC 2012 + SBD release).
  COCO: train and val list the masks of SegmentationClass/train2014 and val2014; val_5000 is a
  fixed random subset of val (seeded, sorted).
* ``labels.json``: ``{"<image id>": [c1, c2, ...]}``, the sorted foreground class indices
  (1..C) present in each image, read from its mask (VOC: SegmentationClassAug, else
  SegmentationClass, else the object names of Annotations/<id>.xml). Images with no mask and no
  annotation (e.g. VOC test) have no entry.

Examples::

    python tools/make_splits.py --dataset voc --root data/VOCdevkit/VOC2012
    python tools/make_splits.py --dataset coco --root data/COCO --workers 8
    python tools/make_splits.py --dataset custom --root data/mydata --num-classes 5
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from excel.classes import VOC_CATEGORIES
from excel.cli import run_command
from excel.data.layout import default_split_dir
from excel.prep.splits import make_coco_splits, make_voc_splits


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=("voc", "coco", "custom"))
    parser.add_argument("--root", required=True, type=Path, help="dataset folder")
    parser.add_argument("--out", type=Path, help="output folder (default: <root>/splits)")
    parser.add_argument("--num-classes", type=int,
                        help="number of foreground classes (required for custom; 20 voc, 80 coco)")
    parser.add_argument("--val-subset-size", type=int, default=5000,
                        help="COCO: size of the fixed validation subset (split val_<size>)")
    parser.add_argument("--seed", type=int, default=0, help="COCO: seed of the validation subset")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="processes used to read the masks")
    args = parser.parse_args(argv)
    if args.dataset == "custom" and args.num_classes is None:
        parser.error("--num-classes is required with --dataset custom")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out_dir = args.out or default_split_dir(args.root)
    run_command(lambda: make_splits(args, out_dir), lambda: out_dir)


def make_splits(args: argparse.Namespace, out_dir: Path) -> None:
    if args.dataset == "coco":
        splits = make_coco_splits(args.root, out_dir, args.num_classes or 80,
                                  args.val_subset_size, args.seed, args.workers)
    else:
        categories = None if args.dataset == "custom" else VOC_CATEGORIES
        splits = make_voc_splits(args.root, out_dir, args.num_classes or 20, categories,
                                 args.dataset, args.workers)
    for split, ids in splits.items():
        print(f"{split}: {len(ids)} images")
    print(f"wrote split lists and labels.json to {out_dir}")


if __name__ == "__main__":
    main()
