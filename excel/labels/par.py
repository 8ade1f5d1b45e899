"""Pixel-adaptive refinement (PAR, docs/method.md §5): propagate label maps along colour-similar neighbours.

The neighbour weights do not change across the iterations, so they are computed once; every
iteration then replaces each pixel by the weighted sum of its M neighbours in the replicate-padded
maps (Hp = H + 2·margin). Three forms compute the same thing, one per kind of device:

* ``native`` (CPU, float32): C kernels (excel/labels/par_native.py) that build the weights and run each
  iteration as one pass over memory, an image at a time so that its weights stay in cache;
* ``sparse`` (CPU without a C compiler, or float64): the weights as a cached CSR matrix
  (B·H·W)×(B·Hp·Wp), one sparse–dense product per iteration;
* ``gather`` (GPU): the weights as a dense B×M×H×W tensor; an iteration gathers the M neighbours of
  every pixel from the padded maps and sums them weighted, a few large kernels instead of 48 passes.

``form="auto"`` picks native, then sparse, on a CPU and gather elsewhere.
"""
from __future__ import annotations

import math
import warnings
from functools import lru_cache
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from excel.labels.par_native import load_kernels, native_affinity, native_propagate

__all__ = ["PAR", "FORMS"]

_STD_EPS = 1e-8
FORMS = ("auto", "native", "sparse", "gather")


def _neighbour_offsets(dilations: Sequence[int]) -> list[tuple[int, int]]:
    """(dy, dx) of the 8 neighbours at every dilation, sorted by dy then dx (row-major order)."""
    return sorted(
        (dy, dx)
        for dilation in dilations
        for dy in (-dilation, 0, dilation)
        for dx in (-dilation, 0, dilation)
        if dy or dx
    )


def _neighbour_distances(offsets: Sequence[tuple[int, int]]) -> torch.Tensor:
    """M float32 distances: the dilation for axis neighbours, √2 times it for diagonal ones."""
    dilation = torch.tensor([max(abs(dy), abs(dx)) for dy, dx in offsets], dtype=torch.float32)
    diagonal = torch.tensor([dy != 0 and dx != 0 for dy, dx in offsets])
    sqrt2 = torch.tensor(math.sqrt(2), dtype=torch.float32)
    return torch.where(diagonal, sqrt2, torch.ones(())) * dilation


def _index_dtype(largest: int) -> torch.dtype:
    return torch.int32 if largest < 2**31 else torch.int64


@lru_cache(maxsize=4)
def _padded_grid_index(batch: int, height: int, width: int, margin: int, device: torch.device) -> torch.Tensor:
    """B·Hp·Wp int64: for every position of the replicate-padded grids, the row of its source pixel."""
    rows = (torch.arange(height + 2 * margin, device=device) - margin).clamp_(0, height - 1)
    cols = (torch.arange(width + 2 * margin, device=device) - margin).clamp_(0, width - 1)
    grid = (rows[:, None] * width + cols[None, :]).flatten()
    return (torch.arange(batch, device=device)[:, None] * (height * width) + grid).flatten()


@lru_cache(maxsize=4)
def _propagation_pattern(batch: int, height: int, width: int, offsets: tuple[tuple[int, int], ...], margin: int,
                         device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR row pointers and column indices of the propagation matrix (B·H·W)×(B·Hp·Wp).

    Row p = (b, y, x) has one entry per offset, at (b, y + margin + dy, x + margin + dx) of the
    padded grids; the offsets are sorted by (dy, dx), so the columns of every row are increasing.
    """
    padded_h, padded_w = height + 2 * margin, width + 2 * margin
    dtype = _index_dtype(batch * padded_h * padded_w)
    corner = (torch.arange(height, device=device)[:, None] * padded_w + torch.arange(width, device=device)).flatten()
    corner = (torch.arange(batch, device=device)[:, None] * (padded_h * padded_w) + corner).flatten()
    shifts = torch.tensor([(margin + dy) * padded_w + margin + dx for dy, dx in offsets])
    if device.type == "cuda":
        shifts = shifts.pin_memory()  # an asynchronous copy: no wait for the work queued on the device
    shifts = shifts.to(device, non_blocking=True)
    columns = (corner[:, None] + shifts).flatten().to(dtype)
    row_pointers = torch.arange(0, columns.numel() + 1, len(offsets), device=device, dtype=dtype)
    return row_pointers, columns


@lru_cache(maxsize=32)           # a validation or pseudo-label pass meets many image sizes
def _gather_index(height: int, width: int, offsets: tuple[tuple[int, int], ...], margin: int,
                  device: torch.device) -> torch.Tensor:
    """M·H·W int32 (int64 past 2³¹ positions): for neighbour m of pixel (y, x), its position in the flattened
    Hp×Wp padded plane. Built on ``device`` (no host computation or copy for a new size)."""
    padded_w = width + 2 * margin
    dtype = _index_dtype((height + 2 * margin) * padded_w)
    rows = torch.arange(margin, height + margin, device=device, dtype=dtype) * padded_w
    corner = (rows[:, None] + torch.arange(margin, width + margin, device=device, dtype=dtype)).flatten()
    shifts = torch.tensor([dy * padded_w + dx for dy, dx in offsets], dtype=dtype).to(device)
    return (shifts[:, None] + corner).flatten()


class PAR(nn.Module):
    """Pixel-adaptive refinement of label maps guided by an image.

    Affinity to each of the 8·len(dilations) neighbours: softmax over neighbours of the
    colour term −(|I_nb − I| / (std_nb(I) + 1e−8) / color_temperature)² (averaged over image
    channels) plus ``position_weight`` times the softmax of the position term
    −(d / (std_nb(d) + 1e−8) / position_temperature)², d the neighbour distance. Each of the
    ``num_iter`` iterations replaces the maps by the affinity-weighted sum of their
    neighbours. Neighbours outside the image take the nearest border value (replicate padding);
    std is the unbiased standard deviation over the neighbours. ``form`` chooses the kernels
    (see the module doc); every form gives the same result up to float rounding.
    """

    def __init__(
        self,
        dilations: Sequence[int] = (1, 2, 4, 8, 12, 24),
        num_iter: int = 20,
        color_temperature: float = 0.3,
        position_temperature: float = 0.3,
        position_weight: float = 0.01,
        form: str = "auto",
    ) -> None:
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"PAR form must be one of {', '.join(FORMS)}, got {form!r}")
        if not dilations or any(int(d) != d or d < 1 for d in dilations) or len(set(dilations)) != len(dilations):
            raise ValueError(
                f"PAR dilations must be distinct positive integers (config key par.dilations), got {list(dilations)}"
            )
        if num_iter < 0:
            raise ValueError(f"PAR num_iter must be >= 0 (config key par.iters), got {num_iter}")
        self.offsets = tuple(_neighbour_offsets([int(d) for d in dilations]))
        self.margin = max(int(d) for d in dilations)
        self.num_iter = num_iter
        self.form = form
        self.color_temperature = color_temperature
        distances = _neighbour_distances(self.offsets)
        position = -(distances / (distances.std() + _STD_EPS) / position_temperature) ** 2
        self.register_buffer("position_affinity", position_weight * position.softmax(dim=0), persistent=False)
        self._native_storage = torch.empty(0)   # the native form's weights, kept across calls (grows as needed)

    def _native_weights_storage(self, values: int) -> torch.Tensor:
        """A float32 CPU buffer of at least ``values`` for the native weights, reused across calls: a fresh
        buffer of this size (tens of MB) costs the system a page fault per 4 kB on first touch, which was
        about a third of PAR's time outside the iterations."""
        if self._native_storage.numel() < values:
            self._native_storage = torch.empty(0)       # release the old buffer before the larger one is mapped
            self._native_storage = torch.empty(values)
        return self._native_storage

    def _neighbours(self, x: torch.Tensor) -> torch.Tensor:
        """B×C×H×W → B×C×M×H×W values of the M neighbours (replicate padding)."""
        height, width = x.shape[-2:]
        padded = F.pad(x, [self.margin] * 4, mode="replicate")
        top, left = self.margin, self.margin
        return torch.stack(
            [padded[..., top + dy:top + dy + height, left + dx:left + dx + width] for dy, dx in self.offsets], dim=2
        )

    def affinity(self, image: torch.Tensor) -> torch.Tensor:
        """B×C×H×W image → B×M×H×W neighbour weights (a view of a contiguous B×H×W×M tensor).

        With E = I_nb − I, the neighbour std is computed from the sums of E and E² (data shifted by
        the centre pixel), and the colour term is −mean_c E_c² / ((std_c + 1e−8)·T)², so the
        B×C×M×H×W neighbour tensor is made once and then only updated in place.
        """
        count = len(self.offsets)
        diffs = self._neighbours(image).sub_(image.unsqueeze(2))  # B×C×M×H×W, E
        sums = diffs.sum(dim=2)
        squares = diffs.square_()
        variance = (squares.sum(dim=2) - sums.square_() / count).clamp_(min=0) / (count - 1)
        scale = ((variance.sqrt_() + _STD_EPS) * self.color_temperature).square_().mul_(-image.shape[1]).reciprocal_()
        color = squares[:, 0] * scale[:, 0, None]
        for channel in range(1, image.shape[1]):
            color.addcmul_(squares[:, channel], scale[:, channel, None])
        weights = color.permute(0, 2, 3, 1).contiguous().softmax(dim=-1)
        return weights.add_(self.position_affinity.to(weights.dtype)).permute(0, 3, 1, 2)

    def propagation_matrix(self, weights: torch.Tensor) -> torch.Tensor:
        """B×M×H×W neighbour weights → sparse CSR (B·H·W)×(B·Hp·Wp) matrix acting on padded maps.

        ``weights`` as returned by :meth:`affinity` (channels innermost in memory) is used without copy.
        """
        batch, count, height, width = weights.shape
        if count != len(self.offsets):
            raise ValueError(f"expected weights for {len(self.offsets)} neighbours, got {count}")
        row_pointers, columns = _propagation_pattern(batch, height, width, self.offsets, self.margin, weights.device)
        padded_size = batch * (height + 2 * self.margin) * (width + 2 * self.margin)
        values = weights.permute(0, 2, 3, 1).reshape(-1)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
            return torch.sparse_csr_tensor(row_pointers, columns, values, size=(batch * height * width, padded_size),
                                           check_invariants=False)

    def resolve_form(self, device: torch.device, dtype: torch.dtype) -> str:
        """The form used for maps of ``dtype`` on ``device``: ``form`` unless "auto" (see the module doc)."""
        if self.form != "auto":
            return self.form
        if device.type != "cpu":
            return "gather"
        return "native" if dtype == torch.float32 and load_kernels() is not None else "sparse"

    def _propagate_sparse(self, weights: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """B×M×H×W weights (channels innermost in memory), B×K×H×W maps → B×K×H×W after num_iter rounds."""
        batch, channels, height, width = masks.shape
        operator = self.propagation_matrix(weights)
        padding = _padded_grid_index(batch, height, width, self.margin, masks.device)
        state = masks.permute(0, 2, 3, 1).reshape(batch * height * width, channels)
        for _ in range(self.num_iter):
            state = operator @ state.index_select(0, padding)
        return state.view(batch, height, width, channels).permute(0, 3, 1, 2)

    def _propagate_gather(self, weights: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """B×M×H×W weights, B×K×H×W maps → B×K×H×W: per round one gather of B×K×M×H×W neighbours."""
        batch, channels, height, width = masks.shape
        index = _gather_index(height, width, self.offsets, self.margin, masks.device)
        weights = weights.contiguous().view(batch, 1, len(self.offsets), height * width)
        state = masks
        for _ in range(self.num_iter):
            padded = F.pad(state, [self.margin] * 4, mode="replicate").flatten(2)
            neighbours = padded.index_select(2, index).view(batch, channels, len(self.offsets), height * width)
            state = neighbours.mul_(weights).sum(dim=2).view(batch, channels, height, width)
        return state

    def forward(self, image: torch.Tensor, masks: torch.Tensor, counts: torch.Tensor | None = None) -> torch.Tensor:
        """image: B×C×Hi×Wi (resized to H×W, bilinear, align_corners=True); masks: B×K×H×W → B×K×H×W.

        counts: optional B ints, how many leading maps of each image are real; the later ones must be all
        zero (padding, which stays zero), and the native form skips them.
        Computed in float32 at least; the result has the dtype of ``masks``.
        """
        if image.dim() != 4 or masks.dim() != 4 or image.shape[0] != masks.shape[0]:
            raise ValueError(
                f"PAR expects image B×C×Hi×Wi and masks B×K×H×W with the same B, "
                f"got {tuple(image.shape)} and {tuple(masks.shape)}"
            )
        height, width = masks.shape[-2:]
        dtype = torch.promote_types(masks.dtype, torch.float32)
        image = F.interpolate(image.to(dtype), size=(height, width), mode="bilinear", align_corners=True)
        state = masks.to(dtype)
        form = self.resolve_form(masks.device, dtype)
        if form == "native":
            offsets = torch.tensor(self.offsets, dtype=torch.int64)
            pad = [self.margin] * 4
            storage = self._native_weights_storage(masks.shape[0] * height * width * len(self.offsets))
            weights = native_affinity(F.pad(image, pad, mode="replicate").contiguous(), self.margin, offsets,
                                      self.color_temperature, _STD_EPS, self.position_affinity, storage)
            out = native_propagate(weights, F.pad(state, pad, mode="replicate").contiguous(), self.margin, offsets,
                                   self.num_iter, counts)
        elif form == "sparse":
            out = self._propagate_sparse(self.affinity(image), state)
        else:
            out = self._propagate_gather(self.affinity(image), state)
        return out.to(masks.dtype)
