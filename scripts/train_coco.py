"""Train ExCEL on MS COCO 2014 (docs/method.md §8).

    python scripts/train_coco.py [--config configs/coco.yaml] [--resume CKPT|auto] [section.key=value ...]
    bash run_train.sh scripts/train_coco.py 0,1 2 29501 my_run     # torchrun, one process per GPU
"""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from excel.apps.pipeline import train_main


def main(argv=None) -> None:
    train_main(argv, ROOT / "configs" / "coco.yaml")


if __name__ == "__main__":
    main()
