"""Learnable Visual Calibration (docs/method.md §7): the adapter features steer the SVC attention.

LVC adds a shift E (B×hw×hw), built from the adapter features F, to every head's calibration attention
on the patch–patch block. As the calibration attention is summed over heads and then applied to every
head's values, the shift adds ``H · E · V_l`` (patch rows) to the merged attention output of SVC layer
l, i.e. ``H · E · (V_l W_lᵀ)`` after out_proj. Summed over the SVC layers this is ``H · E · U`` with
``U = Σ_l V_l W_lᵀ``, which the frozen forward caches (``DenseOutput.lvc_values``): a dynamic CAM costs
one B×hw×hw by B×hw×D_v product instead of a second backbone pass.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from excel.modeling.backbone import DenseOutput


def lvc_shift(features: torch.Tensor, mean_weight: float = 1.0, scale: float = 3.0) -> torch.Tensor:
    """Adapter features B×C×h×w → shift E B×hw×hw added to each head's patch–patch calibration attention.

    S = RᵀR of channel-normalised features; S = (S − mean_weight·mean(S))·scale with the mean over the
    whole batch tensor; negative entries are dropped (−inf) and each row is softmax-normalised.
    """
    r = F.normalize(features.flatten(2), dim=1)
    sim = r.transpose(1, 2) @ r
    sim = (sim - mean_weight * sim.mean()) * scale
    return torch.softmax(sim.masked_fill(sim < 0, float("-inf")), dim=-1)


def lvc_stream(dense: DenseOutput, shift: torch.Tensor) -> torch.Tensor:
    """The calibrated stream B×N×D_v (before ln_post) with LVC's shift E (B×hw×hw) added, from the cache."""
    if dense.calibrated is None or dense.lvc_values is None:
        raise RuntimeError("LVC needs the SVC stream: build the encoder with svc_enabled=True")
    patches = dense.calibrated[:, 1:] + dense.num_heads * (shift.to(dense.lvc_values.dtype) @ dense.lvc_values)
    return torch.cat([dense.calibrated[:, :1], patches], dim=1)
