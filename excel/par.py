"""Pixel-adaptive refinement (PAR, SPEC §5): propagate label maps along colour-similar neighbours."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PAR"]

_STD_EPS = 1e-8


def _neighbour_offsets(dilations: Sequence[int]) -> list[tuple[int, int]]:
    """(dy, dx) of the 8 neighbours at every dilation, dilation-major, row-major inside."""
    return [
        (dy, dx)
        for dilation in dilations
        for dy in (-dilation, 0, dilation)
        for dx in (-dilation, 0, dilation)
        if dy or dx
    ]


def _neighbour_distances(offsets: Sequence[tuple[int, int]]) -> torch.Tensor:
    """M float32 distances: the dilation for axis neighbours, √2 times it for diagonal ones."""
    dilation = torch.tensor([max(abs(dy), abs(dx)) for dy, dx in offsets], dtype=torch.float32)
    diagonal = torch.tensor([dy != 0 and dx != 0 for dy, dx in offsets])
    sqrt2 = torch.tensor(math.sqrt(2), dtype=torch.float32)
    return torch.where(diagonal, sqrt2, torch.ones(())) * dilation


class PAR(nn.Module):
    """Pixel-adaptive refinement of label maps guided by an image.

    Affinity to each of the 8·len(dilations) neighbours: softmax over neighbours of the
    colour term −(|I_nb − I| / (std_nb(I) + 1e−8) / color_temperature)² (averaged over image
    channels) plus ``position_weight`` times the softmax of the position term
    −(d / (std_nb(d) + 1e−8) / position_temperature)², d the neighbour distance. Each of the
    ``num_iter`` iterations replaces the maps by the affinity-weighted sum of their
    neighbours. Neighbours outside the image take the nearest border value (replicate padding);
    std is the unbiased standard deviation over the neighbours.
    """

    def __init__(
        self,
        dilations: Sequence[int] = (1, 2, 4, 8, 12, 24),
        num_iter: int = 20,
        color_temperature: float = 0.3,
        position_temperature: float = 0.3,
        position_weight: float = 0.01,
    ) -> None:
        super().__init__()
        if not dilations or any(int(d) != d or d < 1 for d in dilations):
            raise ValueError(f"PAR dilations must be positive integers (config key par.dilations), got {list(dilations)}")
        if num_iter < 0:
            raise ValueError(f"PAR num_iter must be >= 0 (config key par.iters), got {num_iter}")
        self.offsets = _neighbour_offsets([int(d) for d in dilations])
        self.margin = max(int(d) for d in dilations)
        self.num_iter = num_iter
        self.color_temperature = color_temperature
        distances = _neighbour_distances(self.offsets)
        position = -(distances / (distances.std() + _STD_EPS) / position_temperature) ** 2
        self.register_buffer(
            "position_affinity", position_weight * position.softmax(dim=0).view(1, -1, 1, 1), persistent=False
        )

    def _neighbours(self, x: torch.Tensor) -> torch.Tensor:
        """B×C×H×W → B×C×M×H×W values of the M neighbours (replicate padding)."""
        height, width = x.shape[-2:]
        padded = F.pad(x, [self.margin] * 4, mode="replicate")
        return torch.stack([self._shifted(padded, dy, dx, height, width) for dy, dx in self.offsets], dim=2)

    def _shifted(self, padded: torch.Tensor, dy: int, dx: int, height: int, width: int) -> torch.Tensor:
        top, left = self.margin + dy, self.margin + dx
        return padded[..., top:top + height, left:left + width]

    def affinity(self, image: torch.Tensor) -> torch.Tensor:
        """B×C×H×W image → B×M×H×W neighbour weights."""
        neighbours = self._neighbours(image)
        spread = neighbours.std(dim=2, keepdim=True)
        color = -((neighbours - image.unsqueeze(2)).abs() / (spread + _STD_EPS) / self.color_temperature) ** 2
        return color.mean(dim=1).softmax(dim=1) + self.position_affinity.to(image.dtype)

    def _propagate(self, masks: torch.Tensor, affinity: torch.Tensor) -> torch.Tensor:
        """One step: Σ_nb affinity·mask_nb, accumulated neighbour by neighbour (B×K×H×W memory)."""
        height, width = masks.shape[-2:]
        padded = F.pad(masks, [self.margin] * 4, mode="replicate")
        out = torch.zeros_like(masks)
        for index, (dy, dx) in enumerate(self.offsets):
            out.addcmul_(self._shifted(padded, dy, dx, height, width), affinity[:, index:index + 1])
        return out

    def forward(self, image: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """image: B×C×Hi×Wi (resized to H×W, bilinear, align_corners=True); masks: B×K×H×W → B×K×H×W."""
        if image.dim() != 4 or masks.dim() != 4 or image.shape[0] != masks.shape[0]:
            raise ValueError(
                f"PAR expects image B×C×Hi×Wi and masks B×K×H×W with the same B, "
                f"got {tuple(image.shape)} and {tuple(masks.shape)}"
            )
        image = F.interpolate(image.to(masks.dtype), size=masks.shape[-2:], mode="bilinear", align_corners=True)
        affinity = self.affinity(image)
        for _ in range(self.num_iter):
            masks = self._propagate(masks, affinity)
        return masks
