"""The pipeline's three commands: training (``excel-train``, scripts/train_*.py), the pseudo labels of a split
(``excel-infer-lam``, tools/infer_lam.py) and the segmentation of a split (``excel-infer-seg``,
tools/infer_seg_*.py). Each takes ``--config`` (default: the published VOC setting) and ``section.key=value``
overrides; user errors end as one line (:func:`excel.cli.run_with_config`).
"""
from __future__ import annotations

import os
from typing import Sequence

from excel.cli import config_parser, run_with_config, work_dir_given
from excel.engine.trainer import train
from excel.evaluation.infer_lam import run_pseudo_labels
from excel.evaluation.segment import run_segmentation

VOC_CONFIG = "configs/voc.yaml"


def train_main(argv: Sequence[str] | None = None, default_config: str | os.PathLike = VOC_CONFIG) -> None:
    """Train ExCEL's head (docs/method.md §8): --resume and the config arguments."""
    parser = config_parser("Train ExCEL.", default_config)
    parser.add_argument("--resume", help="checkpoint to continue from (exactly where it stopped), in its own "
                        "work_dir unless work_dir= is given; 'auto': the newest checkpoint in work_dir, or a fresh "
                        "start when there is none")
    run_with_config(parser, lambda cfg, args: train(cfg, args.resume, not work_dir_given(args.overrides)), argv)


def infer_lam_main(argv: Sequence[str] | None = None, default_config: str | os.PathLike = VOC_CONFIG) -> None:
    """Pseudo labels of a split (docs/method.md §9): --checkpoint, --out and the config arguments."""
    parser = config_parser("Make ExCEL pseudo labels for a split and score them.", default_config)
    parser.add_argument("--checkpoint", help="trained head checkpoint (default: training-free)")
    parser.add_argument("--out", help="output folder (default: <work_dir>/pseudo_labels_<split>)")
    run_with_config(parser, lambda cfg, args: run_pseudo_labels(cfg, args.checkpoint, args.out), argv)


def infer_seg_main(argv: Sequence[str] | None = None, default_config: str | os.PathLike = VOC_CONFIG) -> None:
    """Segmentation of a split (docs/method.md §10): --checkpoint, --split, --out and the config arguments."""
    parser = config_parser("Segment a split with a trained ExCEL head (multi-scale + flip, optional DenseCRF, "
                           "mIoU tables).", default_config)
    parser.add_argument("--checkpoint", required=True, help="trained head checkpoint (.pth)")
    parser.add_argument("--split", default="val",
                        help="split list to segment (default: val); names starting with 'test' are not scored")
    parser.add_argument("--out", help="output folder (default: <work_dir>/segment_<split>_<checkpoint name>)")
    run_with_config(parser, lambda cfg, args: run_segmentation(cfg, args.checkpoint, args.split, args.out), argv)
