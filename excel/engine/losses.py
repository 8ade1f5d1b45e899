"""Training losses (docs/method.md §8): class-balanced segmentation cross-entropy and the affinity loss."""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from excel.classes import IGNORE_INDEX


def seg_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """0.5·(mean CE over background pixels + mean CE over foreground pixels).

    logits B×(C+1)×H×W (already at label size), labels B×H×W; each mean is sum / (count + 1e−6).
    """
    ce = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none")
    background = labels == 0
    foreground = (labels != 0) & (labels != ignore_index)
    bg_loss = (ce * background).sum() / (background.sum() + 1e-6)
    fg_loss = (ce * foreground).sum() / (foreground.sum() + 1e-6)
    return 0.5 * (bg_loss + fg_loss)


@lru_cache(maxsize=8)
def radius_mask(h: int, w: int, radius: int, device: torch.device) -> torch.Tensor:
    """hw×hw bool: True where two grid positions are within `radius` (Chebyshev distance). Built once per grid."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    return ((ys[:, None] - ys[None, :]).abs() <= radius) & ((xs[:, None] - xs[None, :]).abs() <= radius)


def affinity_targets(labels: torch.Tensor, grid: tuple[int, int], radius: int,
                     ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and negative pair masks B×hw×hw from labels B×H×W (nearest-downsampled to the grid).

    Pairs farther apart than `radius` and rows/columns of ignored positions take no part.
    """
    small = F.interpolate(labels[:, None].float(), size=grid, mode="nearest")[:, 0].long().flatten(1)
    valid = small != ignore_index
    considered = radius_mask(*grid, radius, labels.device) & valid[:, :, None] & valid[:, None, :]
    same = small[:, :, None] == small[:, None, :]
    return same & considered, ~same & considered


def aff_loss(affinity: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """0.5·Σ_pos(1 − Â)/(n_pos + 1) + 0.5·Σ_neg Â/(n_neg + 1) over the batch; Â B×hw×hw."""
    pos_loss = ((1 - affinity) * positives).sum() / (positives.sum() + 1)
    neg_loss = (affinity * negatives).sum() / (negatives.sum() + 1)
    return 0.5 * pos_loss + 0.5 * neg_loss
