"""Write the synthetic shapes dataset (5 classes: disc, square, triangle, star, ring) in the VOC layout.

--root must be new, empty, or a folder this generator drew before (its splits/scenes.json stamp); any other
folder, such as a real dataset, is refused.

Example::

    python tools/make_synthetic.py --root data/synthetic --num-train 600 --num-val 150 --seed 0
"""
from __future__ import annotations

import argparse
from pathlib import Path

from excel.cli import run_command
from excel.prep.synthetic import CLASS_NAMES
from excel.prep.synthetic_dataset import write_synthetic_dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="dataset folder to write")
    parser.add_argument("--num-train", type=int, default=600)
    parser.add_argument("--num-val", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-size", type=int, default=128, help="smallest image height/width")
    parser.add_argument("--max-size", type=int, default=192, help="largest image height/width")
    parser.add_argument("--ignore-band", type=int, default=1,
                        help="half width in pixels of the 255 band along label boundaries (0: none)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    splits = run_command(lambda: write_synthetic_dataset(args.root, args.num_train, args.num_val, args.seed,
                                                         args.min_size, args.max_size, args.ignore_band),
                         lambda: args.root)
    sizes = ", ".join(f"{split} {len(ids)}" for split, ids in splits.items())
    print(f"wrote {sizes} images of classes {', '.join(CLASS_NAMES)} to {args.root}")


if __name__ == "__main__":
    main()
