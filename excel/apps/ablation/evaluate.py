"""The metrics a sweep can collect from a trained cell, each scored on the config's val split."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig

from excel.config import ConfigError
from excel.evaluation.checkpoint_labels import score_checkpoint_pseudo_labels
from excel.evaluation.segment import run_segmentation

METRICS: dict[str, str] = {
    "trained_static": "the trained model's pseudo labels, static CAMs",
    "trained_lvc": "the trained model's pseudo labels, dynamic (LVC) CAMs",
    "decoder": "the decoder's multi-scale segmentation",
    "decoder_crf": "the decoder's multi-scale segmentation + CRF",
}


def evaluate_checkpoint(cfg: DictConfig, checkpoint: Path, metrics: Sequence[str], out_dir: Path) -> dict[str, float]:
    """mIoU (fraction) of each metric in ``metrics`` for ``checkpoint`` on ``cfg.dataset.val_split``;
    segmentation outputs go to ``out_dir/segment_<split>``."""
    split = cfg.dataset.val_split
    results: dict[str, float] = {}
    if {"trained_static", "trained_lvc"} & set(metrics):
        labels = score_checkpoint_pseudo_labels(cfg, checkpoint, split)
        results.update(trained_static=labels["static"], trained_lvc=labels["dynamic"])
    if {"decoder", "decoder_crf"} & set(metrics):
        if "decoder_crf" in metrics and not cfg.crf.enabled:
            raise ConfigError("the metric decoder_crf needs crf.enabled=true")
        segmentation = run_segmentation(cfg, checkpoint, split, out_dir / f"segment_{split}")
        results["decoder"] = segmentation["raw"]["miou"]
        if segmentation.get("crf") is not None:
            results["decoder_crf"] = segmentation["crf"]["miou"]
    return {metric: results[metric] for metric in metrics}
