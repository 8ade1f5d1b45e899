"""Learnable Visual Calibration: the attention shift E built from the adapter features (docs/method.md §7)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def lvc_shift(features: torch.Tensor, mean_weight: float = 1.0, scale: float = 3.0) -> torch.Tensor:
    """Adapter features B×C×h×w → shift E B×hw×hw added to each head's patch–patch calibration attention.

    S = RᵀR of channel-normalised features; S = (S − mean_weight·mean(S))·scale with the mean over the
    whole batch tensor; negative entries are dropped (−inf) and each row is softmax-normalised.
    """
    r = F.normalize(features.flatten(2), dim=1)
    sim = r.transpose(1, 2) @ r
    sim = (sim - mean_weight * sim.mean()) * scale
    return torch.softmax(sim.masked_fill(sim < 0, float("-inf")), dim=-1)
