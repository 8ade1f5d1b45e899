"""Pseudo labels from CAMs: attention-affinity refinement, class-aware boxes and PAR (docs/method.md §5).

The pipeline for a batch (:func:`pseudo_labels`):

1. fuse the backbone's last attention maps (and, in the dynamic phase, the decoder affinity)
   into one patch affinity per image (:func:`fuse_affinity`);
2. turn it into a symmetric, doubly normalised transition matrix (:func:`transition_matrix`);
3. restrict each positive class to the boxes around its confident regions
   (:func:`class_box_masks`) and propagate its CAM through the transition matrix
   (:func:`refine_cams`);
4. normalise and resize the refined maps to the label size (:func:`cams_to_label_size`) and
   put a background map in front (steps 1–4: :func:`label_maps`);
5. refine with PAR and take the argmax (:func:`labels_from_maps`).

The whole batch is processed at once: the positive classes of every image are padded to the
largest positive count, and only the OpenCV contour search runs per map, on the host, after a
single device-to-host copy per batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
import torch
from torch import nn

from excel.modeling.cam import min_max_normalize
from excel.utils.argmax import argmax

__all__ = [
    "last_layers_affinity",
    "fuse_affinity",
    "transition_matrix",
    "class_box_masks",
    "refine_cams",
    "cams_to_label_size",
    "resize_bilinear",
    "LabelMaps",
    "label_maps",
    "labels_from_maps",
    "pseudo_labels",
]

REFINED_MAP_EPS = 1e-7       # min–max normalisation of the refined CAMs (§5)
_FUSE_EPS = 1e-5


def last_layers_affinity(attn_maps: torch.Tensor, num_layers: int = 6) -> torch.Tensor:
    """Patch-to-patch attention of the last layers.

    attn_maps: L×B×N×N recorded attention maps (N = 1 + h·w, CLS token first).
    Returns B×num_layers×hw×hw (CLS row and column dropped).
    """
    if attn_maps.dim() != 4 or attn_maps.shape[-1] != attn_maps.shape[-2]:
        raise ValueError(f"attn_maps must be L×B×N×N, got shape {tuple(attn_maps.shape)}")
    if not 1 <= num_layers <= attn_maps.shape[0]:
        raise ValueError(
            f"num_layers={num_layers} must be between 1 and the {attn_maps.shape[0]} recorded layers "
            "(config key cam.affinity_layers)"
        )
    return attn_maps[-num_layers:, :, 1:, 1:].transpose(0, 1)


def fuse_affinity(layer_aff: torch.Tensor, decoder_aff: torch.Tensor | None = None) -> torch.Tensor:
    """One affinity per image from the layer affinities, optionally guided by the decoder affinity.

    layer_aff: B×K×hw×hw; decoder_aff: B×hw×hw or None. Returns B×hw×hw.
    Without decoder affinity the K layers are averaged. With it, layer l is kept when
    d_l = Σ(Â − A_l) is at most the mean of d over the layers; the kept layers are averaged
    (count + 1e−5 in the denominator) and multiplied element-wise by Â.
    """
    if layer_aff.dim() != 4:
        raise ValueError(f"layer_aff must be B×K×hw×hw, got shape {tuple(layer_aff.shape)}")
    if decoder_aff is None:
        return layer_aff.mean(dim=1)
    expected = (layer_aff.shape[0], *layer_aff.shape[2:])
    if tuple(decoder_aff.shape) != expected:
        raise ValueError(f"decoder_aff must have shape {expected} (B×hw×hw), got {tuple(decoder_aff.shape)}")
    decoder_aff = decoder_aff.unsqueeze(1)
    gap = (decoder_aff - layer_aff).flatten(2).sum(dim=-1)  # B×K
    keep = (gap <= gap.mean(dim=1, keepdim=True)).to(layer_aff.dtype)[..., None, None]
    kept_mean = (keep * layer_aff).sum(dim=1) / (keep.sum(dim=1) + _FUSE_EPS)
    return kept_mean * decoder_aff.squeeze(1)


def transition_matrix(aff: torch.Tensor, sinkhorn_iters: int = 3) -> torch.Tensor:
    """Symmetric two-step transition matrix of an affinity.

    aff: B×hw×hw (or hw×hw). Each of the ``sinkhorn_iters`` rounds divides by the column sums,
    then by the row sums; the result is symmetrised, (T + Tᵀ)/2, and squared, T·T.
    Half-precision input is computed in float32.
    """
    trans = aff.to(torch.promote_types(aff.dtype, torch.float32))
    for _ in range(sinkhorn_iters):
        trans = trans / trans.sum(dim=-2, keepdim=True)
        trans = trans / trans.sum(dim=-1, keepdim=True)
    trans = (trans + trans.transpose(-1, -2)) / 2
    return trans @ trans


def _fill_boxes(rects: np.ndarray, height: int, width: int) -> np.ndarray:
    """n×4 rectangles (x, y, w, h) → h×w uint8 union of [y, min(y+h, height−1)) × [x, min(x+w, width−1))."""
    x0, y0 = rects[:, 0], rects[:, 1]
    x1 = np.minimum(x0 + rects[:, 2], width - 1)
    y1 = np.minimum(y0 + rects[:, 3], height - 1)
    rows, cols = np.arange(height), np.arange(width)
    in_rows = ((rows >= y0[:, None]) & (rows < y1[:, None])).astype(np.int32)  # n×h
    in_cols = ((cols >= x0[:, None]) & (cols < x1[:, None])).astype(np.int32)  # n×w
    return (in_rows.T @ in_cols > 0).astype(np.uint8)


def _box_masks(maps: np.ndarray, threshold: float) -> np.ndarray:
    """K×h×w float32 maps in [0, 1] → K×h×w uint8 masks covering the boxes of their confident regions."""
    count, height, width = maps.shape
    scores = (maps * 255).astype(np.uint8)
    levels = (threshold * scores.max(axis=(1, 2), initial=0)).astype(np.int64)
    binary = (scores > levels[:, None, None]).astype(np.uint8)
    masks = np.zeros((count, height, width), dtype=np.uint8)
    for index in np.flatnonzero(binary.any(axis=(1, 2))):
        contours, _ = cv2.findContours(binary[index], cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
        rects = np.array([cv2.boundingRect(contour) for contour in contours], dtype=np.int64).reshape(-1, 4)
        masks[index] = _fill_boxes(rects, height, width)
    return masks


def class_box_masks(cams: torch.Tensor, threshold: float) -> torch.Tensor:
    """Class-aware box masks (CLIP-ES style).

    cams: K×h×w maps in [0, 1]. Returns K×h×w float masks in {0, 1} on the device of ``cams``.
    Per map (clamped to [0, 1]): scores = uint8(255·cam) (truncated); pixels with scores > int(threshold·max) form
    regions; every contour (all levels) contributes its bounding box [y, y+h) × [x, x+w), with
    the exclusive ends clipped to h−1 and w−1. No region → all zero.
    """
    if cams.dim() != 3:
        raise ValueError(f"cams must be K×h×w, got shape {tuple(cams.shape)}")
    _check_threshold(threshold)
    maps = cams.detach().to("cpu", torch.float32).clamp(0.0, 1.0).numpy()
    return torch.from_numpy(_box_masks(maps, threshold)).to(device=cams.device, dtype=cams.dtype)


def _check_threshold(threshold: float) -> None:
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"box threshold must be in [0, 1] (config key cam.box_threshold), got {threshold}")


def refine_cams(cams: torch.Tensor, transition: torch.Tensor, box_masks: torch.Tensor) -> torch.Tensor:
    """Propagate box-restricted CAMs through the transition matrix: r_i = Σ_j T_ij·mask_j·cam_j.

    cams, box_masks: (B×)K×h×w; transition: (B×)hw×hw. Returns (B×)K×h×w.
    """
    if cams.shape != box_masks.shape:
        raise ValueError(f"cams {tuple(cams.shape)} and box_masks {tuple(box_masks.shape)} must have the same shape")
    h, w = cams.shape[-2:]
    if transition.shape[-2:] != (h * w, h * w):
        raise ValueError(f"transition must be {h * w}×{h * w} for {h}×{w} maps, got {tuple(transition.shape)}")
    sources = (cams * box_masks).flatten(-2).to(transition.dtype)  # (B×)K×hw
    refined = sources @ transition.transpose(-1, -2)
    return refined.reshape(cams.shape)


@lru_cache(maxsize=32)
def _linear_resize_matrix(src: int, dst: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """dst×src matrix of OpenCV INTER_LINEAR along one axis (half-pixel centres, border taps clamped).

    Sample positions and weights are computed in double precision as OpenCV does; each row has the
    weights 1 − f and f at its two source taps (both on the same tap at the borders).
    """
    pos = (torch.arange(dst, dtype=torch.float64) + 0.5) * (src / dst) - 0.5
    first = pos.floor()
    frac = pos - first
    first = first.long()
    below, beyond = first < 0, first >= src - 1
    frac[below | beyond] = 0.0
    first = torch.where(below, 0, torch.where(beyond, src - 1, first))
    second = (first + 1).clamp(max=src - 1)
    frac = frac.to(torch.float32).to(dtype)
    matrix = torch.zeros(dst, src, dtype=dtype)
    rows = torch.arange(dst)
    matrix.index_put_((rows, first), 1 - frac, accumulate=True)
    matrix.index_put_((rows, second), frac, accumulate=True)
    return matrix.to(device)


def resize_bilinear(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize with OpenCV INTER_LINEAR semantics (cv2.resize on float32 maps).

    maps: …×h×w float; size: (H, W). Returns …×H×W. The horizontal pass runs before the vertical
    one, each as a product with a cached interpolation matrix.
    """
    out_h, out_w = size
    in_h, in_w = maps.shape[-2:]
    columns = _linear_resize_matrix(in_w, out_w, maps.dtype, maps.device)
    rows = _linear_resize_matrix(in_h, out_h, maps.dtype, maps.device)
    return rows @ (maps @ columns.T)


def cams_to_label_size(refined: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Min–max normalise each map (x − min; x / (max + 1e−7)) and resize it to ``size``.

    refined: …×h×w. Returns …×H×W (OpenCV INTER_LINEAR resize).
    """
    return resize_bilinear(min_max_normalize(refined, dim=(-2, -1), eps=REFINED_MAP_EPS), size)


@dataclass
class LabelMaps:
    """Score maps of a batch before PAR.

    maps: B×(1+P)×H×W, the background map 1 − max_c(fg) then the image's positive-class maps in
    class order, zero-padded to the largest positive count P of the batch.
    keys: B×(1+P) int64 label of each channel: 0 background, c + 1 for class c, −1 for padding.
    """

    maps: torch.Tensor
    keys: torch.Tensor


def _positive_inputs(cams: torch.Tensor, cls_labels: torch.Tensor,
                     box_threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The positive classes' CAMs and box masks, gathered on the host with one device-to-host copy.

    cams: B×C×h×w; cls_labels: B×C. Returns (cams B×P×h×w, box masks B×P×h×w, keys B×(1+P) as in
    :class:`LabelMaps`) on the host, zero-padded to the largest positive count P of the batch.
    """
    batch, num_classes, h, w = cams.shape
    host = torch.cat([cls_labels.to(cams.dtype).unsqueeze(-1), cams.detach().flatten(2)], dim=-1).cpu()
    positive = host[..., 0] != 0
    batch_idx, class_idx = positive.nonzero(as_tuple=True)
    slot_idx = (positive.long().cumsum(dim=1) - 1)[batch_idx, class_idx]
    max_positives = int(positive.sum(dim=1).max()) if positive.numel() else 0

    positive_cams = host[batch_idx, class_idx, 1:].view(-1, h, w)
    masks = _box_masks(positive_cams.float().clamp(0.0, 1.0).numpy(), box_threshold)
    padded_cams = positive_cams.new_zeros(batch, max_positives, h, w)
    padded_masks = torch.zeros_like(padded_cams)
    padded_cams[batch_idx, slot_idx] = positive_cams
    padded_masks[batch_idx, slot_idx] = torch.from_numpy(masks).to(padded_masks.dtype)
    keys = torch.full((batch, 1 + max_positives), -1, dtype=torch.long)
    keys[:, 0] = 0
    keys[batch_idx, 1 + slot_idx] = class_idx + 1
    return padded_cams, padded_masks, keys


@torch.no_grad()
def label_maps(
    cams: torch.Tensor,
    cls_labels: torch.Tensor,
    layer_aff: torch.Tensor,
    label_size: tuple[int, int],
    box_threshold: float,
    decoder_aff: torch.Tensor | None = None,
) -> LabelMaps:
    """Refined CAMs of the positive classes at the label size, with the background map in front.

    cams: B×C×h×w foreground CAMs in [0, 1]; cls_labels: B×C multi-hot image labels;
    layer_aff: B×K×hw×hw attention affinities; label_size: (H, W); decoder_aff: B×hw×hw (dynamic
    phase) or None. The class boxes need OpenCV, so CAMs and labels cross to the host once per batch;
    everything else stays on the device of ``cams``.
    """
    batch, num_classes, h, w = cams.shape
    if cls_labels.shape != (batch, num_classes):
        raise ValueError(f"cls_labels must be B×C = {(batch, num_classes)}, got {tuple(cls_labels.shape)}")
    if layer_aff.shape[0] != batch or layer_aff.shape[-2:] != (h * w, h * w):
        raise ValueError(f"layer_aff must be {batch}×K×{h * w}×{h * w}, got {tuple(layer_aff.shape)}")
    _check_threshold(box_threshold)
    positive_cams, box_masks, keys = _positive_inputs(cams, cls_labels, box_threshold)
    # copied back while the device is idle (the host copy above waited for it), before the transition matrix
    positive_cams, box_masks = (t.to(cams.device, non_blocking=True) for t in (positive_cams, box_masks))
    keys = keys.to(cams.device, non_blocking=True)
    transition = transition_matrix(fuse_affinity(layer_aff, decoder_aff))
    # Padded maps are all zero and stay zero through normalisation and resizing; every real map
    # is non-negative, so the padding does not change the background map either.
    refined = refine_cams(positive_cams, transition, box_masks)
    fg_maps = cams_to_label_size(refined, label_size)
    bg_map = 1 - fg_maps.amax(dim=1, keepdim=True) if fg_maps.shape[1] else fg_maps.new_ones(batch, 1, *label_size)
    return LabelMaps(maps=torch.cat([bg_map, fg_maps], dim=1), keys=keys)


def labels_from_maps(maps: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Argmax over the real channels (ties go to the first): maps B×(1+P)×H×W, keys B×(1+P) → B×H×W int64."""
    winner = argmax(maps.masked_fill((keys < 0)[..., None, None], float("-inf")), dim=1)
    return keys.gather(1, winner.flatten(1)).view(winner.shape)


@torch.no_grad()
def pseudo_labels(
    cams: torch.Tensor,
    cls_labels: torch.Tensor,
    layer_aff: torch.Tensor,
    par_image: torch.Tensor,
    label_size: tuple[int, int],
    box_threshold: float,
    par: nn.Module,
    decoder_aff: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pseudo labels of a batch from its CAMs (docs/method.md §5).

    cams: B×C×h×w foreground CAMs in [0, 1]; cls_labels: B×C multi-hot image labels;
    layer_aff: B×K×hw×hw attention affinities; par_image: B×3×Hi×Wi image given to PAR;
    label_size: (H, W); decoder_aff: B×hw×hw decoder affinity (dynamic phase) or None.
    ``par`` is called as par(image, maps, counts), counts the real (leading) maps of each image.
    Returns B×H×W int64 labels: 0 background, c + 1 for foreground class c.

    Only an image's positive classes take part. Their maps are padded to the largest positive
    count of the batch so that the box-restricted propagation and PAR run for the whole batch
    at once; padded channels are excluded from the argmax.
    """
    if par_image.dim() != 4 or par_image.shape[0] != cams.shape[0]:
        raise ValueError(f"par_image must be {cams.shape[0]}×3×Hi×Wi, got {tuple(par_image.shape)}")
    maps = label_maps(cams, cls_labels, layer_aff, label_size, box_threshold, decoder_aff)
    if maps.keys.shape[1] == 1:
        return torch.zeros(cams.shape[0], *label_size, dtype=torch.long, device=cams.device)
    refined = par(par_image.to(maps.maps.dtype), maps.maps, (maps.keys >= 0).sum(dim=1))
    return labels_from_maps(refined, maps.keys)
