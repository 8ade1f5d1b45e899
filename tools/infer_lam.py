"""Pseudo labels (and their mIoU where masks exist) for a dataset split.

    python tools/infer_lam.py --config configs/voc.yaml [--checkpoint CKPT] [--out DIR] [section.key=value ...]
    bash infer_lam.sh tools/infer_lam.py 0,1 2 train [CKPT]        # torchrun, one process per GPU

Without --checkpoint the labels are training-free (frozen CLIP with SVC + TSE); with it they come from
the trained model's dynamic (LVC) CAMs. Output: <out>/pseudo_labels/<id>.png and the metric table.
"""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from excel.cli import config_parser, run_with_config
from excel.evaluation.infer_lam import run_pseudo_labels


def main(argv=None) -> None:
    parser = config_parser("Make ExCEL pseudo labels for a split and score them.", ROOT / "configs" / "voc.yaml")
    parser.add_argument("--checkpoint", help="trained head checkpoint (default: training-free)")
    parser.add_argument("--out", help="output folder (default: <work_dir>/pseudo_labels_<split>)")
    run_with_config(parser, lambda cfg, args: run_pseudo_labels(cfg, args.checkpoint, args.out), argv)


if __name__ == "__main__":
    main()
