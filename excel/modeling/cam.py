"""Training-free CAMs from patch–text alignment with CLIP-Surgery feature surgery (docs/method.md §4)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def feature_surgery(tokens: torch.Tensor, text: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """Similarity with redundant features removed: tokens B×N×D (normalised), text T×D → B×N×T.

    w = p / mean(p), p = softmax(temperature · CLS·textᵀ);
    sim[b,n,t] = w[b,t]·s[b,n,t] − mean_t' w[b,t']·s[b,n,t'] with s = tokens·textᵀ. This equals the
    published element-wise form (a B×N×T×D tensor summed over D) computed as matrix products.
    """
    scores = tokens @ text.T
    prob = torch.softmax(temperature * scores[:, :1], dim=-1)
    weighted = scores * (prob / prob.mean(dim=-1, keepdim=True))
    return weighted - weighted.mean(dim=-1, keepdim=True)


def min_max_normalize(maps: torch.Tensor, dim: int | tuple[int, ...], eps: float = 0.0) -> torch.Tensor:
    """(x − min) / (max − min + eps) over ``dim``; the eps differs by stage as published (docs/method.md §4, §5, §9)."""
    low = maps.amin(dim=dim, keepdim=True)
    return (maps - low) / (maps.amax(dim=dim, keepdim=True) - low + eps)


def surgery_cams(tokens: torch.Tensor, text: torch.Tensor, num_foreground: int,
                 grid: tuple[int, int]) -> torch.Tensor:
    """Static CAMs: P B×N×D (CLS first), text T×D (foreground rows first) → B×C_fg×h×w in [0, 1].

    Computed in fp32 whatever the tokens' dtype (half-precision tokens are cast up).
    P is L2-normalised over the token dimension (as published); each class map is min–max normalised
    over all N tokens (CLS included) before the CLS token and the background classes are dropped.
    """
    sim = feature_surgery(F.normalize(tokens.float(), dim=1), text.float())
    sim = min_max_normalize(sim, dim=1)
    cams = sim[:, 1:, :num_foreground]
    return cams.transpose(1, 2).unflatten(2, grid)
