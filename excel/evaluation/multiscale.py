"""Multi-scale + flip logits of one image (docs/method.md §10), and their reduction for the CRF workers."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from excel.config import ConfigError
from excel.data.transforms import normalize
from excel.modeling.model import ExCEL

SegmentFn = Callable[[torch.Tensor], torch.Tensor]


def scaled_side(resize: int, scale: float) -> int:
    """Side of the square network input at ``scale``: int(resize·scale), as the published code."""
    return int(resize * scale)


def check_scales(resize: int, scales: Sequence[float], patch_size: int) -> None:
    """Raise unless every scaled input side is a positive multiple of the patch size."""
    if not scales:
        raise ConfigError("infer.scales is empty; give at least one scale, e.g. [1.0]")
    bad = [s for s in scales if scaled_side(resize, s) <= 0 or scaled_side(resize, s) % patch_size]
    if bad:
        raise ConfigError(f"infer.scales {bad} with infer.resize={resize} give input sides "
                         f"{[scaled_side(resize, s) for s in bad]} that are not positive multiples of "
                         f"{patch_size}; choose scales s with int({resize}·s) divisible by {patch_size}")


def multiscale_logits(segment_fn: SegmentFn, image: torch.Tensor, resize: int = 320,
                      scales: Sequence[float] = (0.7, 1.0, 1.2, 1.5), flip: bool = True,
                      flip_unit_scale: bool = False) -> torch.Tensor:
    """Multi-scale, flip-averaged logits (C+1)×H×W of one normalised 1×3×H×W image.

    For every scale s the image is resized (bilinear, align_corners=False) to a square of side
    int(resize·s); ``segment_fn`` maps the B×3×S×S batch to B×(C+1)×h×w logits, which are upsampled
    to H×W (bilinear). With ``flip`` the image and its horizontal flip go through ``segment_fn`` as
    one batch of two, and the flip's logits (flipped back) are averaged with the image's.
    Quirk (published VOC code): at s = 1 the flip is left out unless ``flip_unit_scale`` (the
    published COCO code flips at every scale). The result is the mean over the scales.
    """
    if image.ndim != 4 or image.shape[:2] != (1, 3):
        raise ValueError(f"expected one normalised image of shape 1×3×H×W, got {tuple(image.shape)}")
    size = image.shape[-2:]
    total = None
    for scale in scales:
        side = scaled_side(resize, scale)
        resized = F.interpolate(image, size=(side, side), mode="bilinear", align_corners=False)
        with_flip = flip and (scale != 1.0 or flip_unit_scale)
        batch = torch.cat([resized, resized.flip(-1)]) if with_flip else resized
        logits = F.interpolate(segment_fn(batch).float(), size=size, mode="bilinear", align_corners=False)
        logits = (logits[0] + logits[1].flip(-1)) / 2 if with_flip else logits[0]
        total = logits if total is None else total + logits
    return total / len(scales)


def image_logits(model: ExCEL, image: np.ndarray, cfg: DictConfig, scales: Sequence[float], flip: bool) -> torch.Tensor:
    """(C+1)×H×W multi-scale logits of an H×W×3 uint8 RGB image on the model's device: normalised with
    dataset.normalize, resized around infer.resize, with infer.flip_unit_scale (docs/method.md §10)."""
    device = next(model.head.parameters()).device
    pixels = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)[None]
    return multiscale_logits(model.segment, normalize(pixels, cfg.dataset.normalize), cfg.infer.resize, scales,
                             flip, bool(cfg.infer.flip_unit_scale))


def reduce_logits(logits: torch.Tensor, stride: int) -> np.ndarray:
    """(C+1)×H×W logits → numpy (C+1)×⌈H/stride⌉×⌈W/stride⌉ for the CRF workers.

    stride 1 keeps the full-resolution float32 logits (the published pipeline); larger strides
    resample bilinearly and store float16 (the workers upsample back to H×W before the CRF).
    """
    if stride < 1:
        raise ValueError(f"infer.logit_stride={stride} must be >= 1")
    if stride == 1:
        return logits.float().cpu().numpy()
    size = (math.ceil(logits.shape[-2] / stride), math.ceil(logits.shape[-1] / stride))
    small = F.interpolate(logits[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    return small.half().cpu().numpy()
