"""Pseudo labels from CAMs: attention-affinity refinement, class-aware boxes and PAR (SPEC §5).

The pipeline for a batch (:func:`pseudo_labels`):

1. fuse the backbone's last attention maps (and, in the dynamic phase, the decoder affinity)
   into one patch affinity per image (:func:`fuse_affinity`);
2. turn it into a symmetric, doubly normalised transition matrix (:func:`transition_matrix`);
3. restrict each positive class to the boxes around its confident regions
   (:func:`class_box_masks`) and propagate its CAM through the transition matrix
   (:func:`refine_cams`);
4. normalise and resize the refined maps to the label size (:func:`cams_to_label_size`),
   put a background map in front, refine with PAR and take the argmax.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import nn

__all__ = [
    "last_layers_affinity",
    "fuse_affinity",
    "transition_matrix",
    "class_box_masks",
    "refine_cams",
    "cams_to_label_size",
    "resize_bilinear",
    "pseudo_labels",
]

_NORM_EPS = 1e-7
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


def _boxes_mask(cam: np.ndarray, threshold: float) -> np.ndarray:
    """h×w float32 map in [0, 1] → h×w uint8 mask covering the boxes of its confident regions."""
    height, width = cam.shape
    scores = (cam * 255).astype(np.uint8)
    binary = (scores > int(threshold * int(scores.max()))).astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
    mask = np.zeros((height, width), dtype=np.uint8)
    for contour in contours:
        x, y, box_w, box_h = cv2.boundingRect(contour)
        mask[y:min(y + box_h, height - 1), x:min(x + box_w, width - 1)] = 1
    return mask


def class_box_masks(cams: torch.Tensor, threshold: float) -> torch.Tensor:
    """Class-aware box masks (CLIP-ES style).

    cams: K×h×w maps in [0, 1]. Returns K×h×w float masks in {0, 1} on the device of ``cams``.
    Per map (clamped to [0, 1]): scores = uint8(255·cam) (truncated); pixels with scores > int(threshold·max) form
    regions; every contour (all levels) contributes its bounding box [y, y+h) × [x, x+w), with
    the exclusive ends clipped to h−1 and w−1. No region → all zero.
    """
    if cams.dim() != 3:
        raise ValueError(f"cams must be K×h×w, got shape {tuple(cams.shape)}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"box threshold must be in [0, 1] (config key cam.box_threshold), got {threshold}")
    maps = cams.detach().to("cpu", torch.float32).clamp(0.0, 1.0).numpy()
    masks = np.stack([_boxes_mask(cam, threshold) for cam in maps]) if len(maps) else np.zeros(maps.shape, np.uint8)
    return torch.from_numpy(masks).to(device=cams.device, dtype=cams.dtype)


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


def _linear_taps(src: int, dst: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices and weights of OpenCV INTER_LINEAR along one axis (half-pixel centres)."""
    pos = (torch.arange(dst, dtype=torch.float64) + 0.5) * (src / dst) - 0.5
    first = pos.floor()
    frac = pos - first
    first = first.long()
    below, beyond = first < 0, first >= src - 1
    frac[below | beyond] = 0.0
    first = torch.where(below, 0, torch.where(beyond, src - 1, first))
    second = (first + 1).clamp(max=src - 1)
    return first.to(device), second.to(device), frac.to(device=device, dtype=torch.float32)


def resize_bilinear(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize with OpenCV INTER_LINEAR semantics (cv2.resize on float32 maps).

    maps: …×h×w float; size: (H, W). Returns …×H×W. Sample positions and weights are computed
    in double precision as OpenCV does; the horizontal pass runs before the vertical one.
    """
    out_h, out_w = size
    in_h, in_w = maps.shape[-2:]
    col0, col1, col_frac = _linear_taps(in_w, out_w, maps.device)
    row0, row1, row_frac = _linear_taps(in_h, out_h, maps.device)
    col_frac, row_frac = col_frac.to(maps.dtype), row_frac.to(maps.dtype)[:, None]
    maps = maps[..., col0] * (1 - col_frac) + maps[..., col1] * col_frac
    return maps[..., row0, :] * (1 - row_frac) + maps[..., row1, :] * row_frac


def cams_to_label_size(refined: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Min–max normalise each map (x − min; x / (max + 1e−7)) and resize it to ``size``.

    refined: …×h×w. Returns …×H×W (OpenCV INTER_LINEAR resize).
    """
    refined = refined - refined.amin(dim=(-2, -1), keepdim=True)
    refined = refined / (refined.amax(dim=(-2, -1), keepdim=True) + _NORM_EPS)
    return resize_bilinear(refined, size)


def _positive_slots(cls_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Batch index, class index and per-image slot (0, 1, … in class order) of every positive label."""
    positive = cls_labels != 0
    batch_idx, class_idx = positive.nonzero(as_tuple=True)
    slot_idx = (positive.long().cumsum(dim=1) - 1)[batch_idx, class_idx]
    max_positives = int(positive.sum(dim=1).max()) if positive.numel() else 0
    return batch_idx, class_idx, slot_idx, max_positives


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
    """Pseudo labels of a batch from its CAMs (SPEC §5).

    cams: B×C×h×w foreground CAMs in [0, 1]; cls_labels: B×C multi-hot image labels;
    layer_aff: B×K×hw×hw attention affinities; par_image: B×3×Hi×Wi image given to PAR;
    label_size: (H, W); decoder_aff: B×hw×hw decoder affinity (dynamic phase) or None.
    Returns B×H×W int64 labels: 0 background, c + 1 for foreground class c.

    Only an image's positive classes take part. Their maps are padded to the largest positive
    count of the batch so that the box-restricted propagation and PAR run for the whole batch
    at once; padded channels are excluded from the argmax.
    """
    batch, num_classes, h, w = cams.shape
    if cls_labels.shape != (batch, num_classes):
        raise ValueError(f"cls_labels must be B×C = {(batch, num_classes)}, got {tuple(cls_labels.shape)}")
    if layer_aff.shape[0] != batch or layer_aff.shape[-2:] != (h * w, h * w):
        raise ValueError(f"layer_aff must be {batch}×K×{h * w}×{h * w}, got {tuple(layer_aff.shape)}")
    if par_image.dim() != 4 or par_image.shape[0] != batch:
        raise ValueError(f"par_image must be {batch}×3×Hi×Wi, got {tuple(par_image.shape)}")
    height, width = label_size

    batch_idx, class_idx, slot_idx, max_positives = _positive_slots(cls_labels)
    if max_positives == 0:
        return torch.zeros(batch, height, width, dtype=torch.long, device=cams.device)

    transition = transition_matrix(fuse_affinity(layer_aff, decoder_aff))
    positive_cams = cams[batch_idx, class_idx].to(transition.dtype)  # P×h×w, one per positive label
    padded_cams = positive_cams.new_zeros(batch, max_positives, h, w)
    padded_masks = torch.zeros_like(padded_cams)
    padded_cams[batch_idx, slot_idx] = positive_cams
    padded_masks[batch_idx, slot_idx] = class_box_masks(positive_cams, box_threshold)

    # Padded maps are all zero and stay zero through normalisation and resizing; every real map
    # is non-negative, so the padding does not change the background map either.
    fg_maps = cams_to_label_size(refine_cams(padded_cams, transition, padded_masks), (height, width))
    bg_map = 1 - fg_maps.amax(dim=1, keepdim=True)
    maps = par(par_image.to(fg_maps.dtype), torch.cat([bg_map, fg_maps], dim=1))

    valid = torch.zeros(batch, 1 + max_positives, dtype=torch.bool, device=cams.device)
    valid[:, 0] = True
    valid[batch_idx, 1 + slot_idx] = True
    maps = maps.masked_fill(~valid[..., None, None], float("-inf"))

    keys = torch.zeros(batch, 1 + max_positives, dtype=torch.long, device=cams.device)
    keys[batch_idx, 1 + slot_idx] = class_idx + 1
    winner = maps.argmax(dim=1)  # B×H×W slot indices
    return keys.gather(1, winner.flatten(1)).view(batch, height, width)
