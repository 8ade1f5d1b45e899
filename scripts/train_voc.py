"""Train ExCEL on PASCAL VOC 2012 (docs/method.md §8).

    python scripts/train_voc.py [--config configs/voc.yaml] [--resume CKPT] [section.key=value ...]
    bash run_train.sh scripts/train_voc.py 0,1 2 29501 my_run     # torchrun, one process per GPU
"""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from excel.cli import config_parser, run_with_config
from excel.engine.trainer import train


def main(argv=None) -> None:
    parser = config_parser("Train ExCEL on PASCAL VOC 2012.", ROOT / "configs" / "voc.yaml")
    parser.add_argument("--resume", help="checkpoint to continue from (exactly where it stopped)")
    run_with_config(parser, lambda cfg, args: train(cfg, args.resume), argv)


if __name__ == "__main__":
    main()
