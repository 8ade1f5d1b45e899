"""Segmentation metrics (docs/method.md §11): confusion matrix, IoU, precision, recall, pixel accuracy."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from excel.io import write_text
from excel.utils.distributed import all_reduce_sum

__all__ = ["confusion_matrix", "scores", "format_table", "save_scores", "ConfusionMeter"]


def _as_tensor(labels: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(np.ascontiguousarray(labels))
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch tensor or a numpy array, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"labels must have an integer dtype, got {labels.dtype}")
    return labels.long()


def confusion_matrix(
    pred: torch.Tensor | np.ndarray, gt: torch.Tensor | np.ndarray, num_classes: int
) -> torch.Tensor:
    """C×C int64 confusion matrix (rows ground truth, columns prediction) on gt's device.

    pred, gt: label maps of the same shape (any number of dimensions). Pixels whose ground truth
    or prediction lies outside 0..C−1 (e.g. 255 = ignore) are not counted.
    """
    pred, gt = _as_tensor(pred), _as_tensor(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from ground-truth shape {tuple(gt.shape)}")
    pred, gt = pred.to(gt.device).flatten(), gt.flatten()
    valid = (gt >= 0) & (gt < num_classes) & (pred >= 0) & (pred < num_classes)
    counts = torch.bincount(gt[valid] * num_classes + pred[valid], minlength=num_classes * num_classes)
    return counts.view(num_classes, num_classes)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Element-wise numerator / denominator with NaN where the denominator is 0."""
    out = np.full(numerator.shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def scores(conf: torch.Tensor | np.ndarray) -> dict[str, Any]:
    """Metrics of a C×C confusion matrix (rows ground truth).

    Returns a dict with per-class lists ``iou``, ``precision``, ``recall`` (NaN where undefined),
    ``present`` (class occurs in the ground truth), ``confusion`` (the matrix as nested lists), and floats ``miou`` (mean IoU over the
    present classes), ``pixel_accuracy`` and ``mean_accuracy`` (mean recall over present classes).
    """
    conf = conf.detach().cpu().numpy() if isinstance(conf, torch.Tensor) else np.asarray(conf)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"confusion matrix must be square C×C, got shape {conf.shape}")
    conf = conf.astype(np.float64)
    tp = np.diag(conf)
    gt_count, pred_count = conf.sum(axis=1), conf.sum(axis=0)
    present = gt_count > 0
    iou = _ratio(tp, gt_count + pred_count - tp)
    recall = _ratio(tp, gt_count)
    total = conf.sum()
    return {
        "miou": float(iou[present].mean()) if present.any() else math.nan,
        "pixel_accuracy": float(tp.sum() / total) if total > 0 else math.nan,
        "mean_accuracy": float(recall[present].mean()) if present.any() else math.nan,
        "iou": iou.tolist(),
        "precision": _ratio(tp, pred_count).tolist(),
        "recall": recall.tolist(),
        "present": present.tolist(),
        "confusion": conf.astype(np.int64).tolist(),
    }


def _percent(value: float) -> str:
    return "   n/a" if math.isnan(value) else f"{100 * value:6.2f}"


def format_table(scores: dict[str, Any], categories: Sequence[str]) -> str:
    """Per-class table of IoU / precision / recall in %, followed by mIoU and pixel accuracy."""
    if len(categories) != len(scores["iou"]):
        raise ValueError(
            f"{len(categories)} class names given for {len(scores['iou'])} classes "
            "(class names must include background)"
        )
    width = max(len("class"), *(len(name) for name in categories))
    lines = [f"{'class':<{width}}    IoU   Prec    Rec"]
    for index, name in enumerate(categories):
        row = [_percent(scores[key][index]) for key in ("iou", "precision", "recall")]
        marker = "" if scores["present"][index] else "  (absent)"
        lines.append(f"{name:<{width}} " + " ".join(row) + marker)
    lines.append(f"{'mIoU':<{width}} {_percent(scores['miou'])}")
    lines.append(f"{'pixel acc':<{width}} {_percent(scores['pixel_accuracy'])}")
    return "\n".join(lines)


def _json_safe(value: Any) -> Any:
    """NaN → None (strict JSON), recursively."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    return value


def save_scores(scores: dict[str, Any], categories: Sequence[str], path_prefix: str | os.PathLike) -> None:
    """Write ``<prefix>.txt`` (the table) and ``<prefix>.json`` (scores with category names; NaN as null)."""
    prefix = Path(path_prefix)
    record = {"categories": list(categories), **scores}
    write_text(prefix.with_name(prefix.name + ".txt"), format_table(scores, categories) + "\n")
    write_text(prefix.with_name(prefix.name + ".json"), json.dumps(_json_safe(record), indent=2) + "\n")


class ConfusionMeter:
    """Accumulates a confusion matrix over batches (and, with :meth:`all_reduce`, over ranks)."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)

    def reset(self) -> None:
        self.matrix.zero_()

    def update(self, pred: torch.Tensor | np.ndarray, gt: torch.Tensor | np.ndarray) -> None:
        """Add the pixels of one prediction / ground-truth pair (or a batch of them)."""
        self.matrix += confusion_matrix(pred, gt, self.num_classes).to(self.matrix.device)

    def all_reduce(self) -> None:
        """Sum the matrix over all ranks when torch.distributed is initialised (no-op otherwise)."""
        self.matrix = all_reduce_sum(self.matrix)

    def scores(self) -> dict[str, Any]:
        return scores(self.matrix)
