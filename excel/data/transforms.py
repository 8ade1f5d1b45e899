"""Image normalisation and the training augmentation (random rescale, flip, crop).

All randomness comes from an explicit ``numpy.random.Generator`` passed to each call, so an
augmented sample is a pure function of (image, mask, generator state). The dataset seeds one
generator per sample from (seed, epoch, index); see :class:`excel.data.SegmentationDataset`.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from excel.classes import IGNORE_INDEX

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
CLIP_MEAN = tuple(255.0 * m for m in (0.48145466, 0.4578275, 0.40821073))
CLIP_STD = tuple(255.0 * s for s in (0.26862954, 0.26130258, 0.27577711))
NORMALIZATION = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "clip": (CLIP_MEAN, CLIP_STD)}
NormalizeMode = Literal["imagenet", "clip"]


def normalization_constants(mode: NormalizeMode, device: torch.device | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (0–255 scale) as 3×1×1 float32 tensors on ``device``, made once per device (a GPU
    training step then copies nothing from the host); shared, so never modify them in place."""
    if mode not in NORMALIZATION:
        raise ValueError(f"unknown normalisation {mode!r}; expected one of {sorted(NORMALIZATION)}")
    return _constants(mode, torch.device(device) if device is not None else torch.device("cpu"))


@lru_cache(maxsize=None)
def _constants(mode: NormalizeMode, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = NORMALIZATION[mode]
    return (torch.tensor(mean, dtype=torch.float32, device=device).view(3, 1, 1),
            torch.tensor(std, dtype=torch.float32, device=device).view(3, 1, 1))


def to_chw_tensor(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """H×W×3 numpy array → 3×H×W float32 tensor; tensors (…×3×H×W) are cast to float32."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an H×W×3 image array, got shape {image.shape}")
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    if image.ndim < 3 or image.shape[-3] != 3:
        raise ValueError(f"expected a …×3×H×W image tensor, got shape {tuple(image.shape)}")
    return image.float()


def normalize(image: np.ndarray | torch.Tensor, mode: NormalizeMode = "imagenet") -> torch.Tensor:
    """(x − mean) / std on the 0–255 scale.

    ``image``: H×W×3 numpy array (uint8 or float) or a …×3×H×W tensor on the 0–255 scale.
    Returns a float32 tensor …×3×H×W on the input's device.
    """
    image = to_chw_tensor(image)
    mean, std = normalization_constants(mode, image.device)
    return ((image - mean) / std).contiguous()


def denormalize(image: torch.Tensor, mode: NormalizeMode = "imagenet") -> torch.Tensor:
    """Inverse of :func:`normalize`: …×3×H×W float tensor back to the 0–255 scale (float32)."""
    mean, std = normalization_constants(mode, image.device)
    return image.float() * std + mean


def rescale(image: np.ndarray, mask: np.ndarray | None, scale: float
            ) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize an H×W×3 uint8 image (bilinear) and its H×W mask (nearest) by ``scale``.

    The new size is (int(scale·H), int(scale·W)), at least 1; resampling is PIL's.
    """
    height, width = image.shape[:2]
    size = (max(1, int(scale * width)), max(1, int(scale * height)))
    image = np.asarray(Image.fromarray(image).resize(size, resample=Image.BILINEAR))
    if mask is not None:
        mask = np.asarray(Image.fromarray(mask).resize(size, resample=Image.NEAREST))
    return image, mask


def crop_is_balanced(label: np.ndarray, max_class_ratio: float,
                     ignore_index: int = IGNORE_INDEX) -> bool:
    """True if the crop has labelled pixels and no class covers ``max_class_ratio`` of them.

    Ignored pixels (padding included) are not counted; background counts as a class.
    """
    counts = np.bincount(label.ravel(), minlength=256)
    counts[ignore_index] = 0
    total = counts.sum()
    return bool(total > 0 and counts.max() / total < max_class_ratio)


def choose_crop_box(label: np.ndarray | None, crop_size: int, canvas_size: tuple[int, int],
                    rng: np.random.Generator, max_class_ratio: float = 0.75, max_tries: int = 10,
                    ignore_index: int = IGNORE_INDEX) -> tuple[int, int]:
    """Top-left corner (y, x) of a crop_size×crop_size crop of the padded canvas.

    Corners are drawn uniformly; with a label (the padded canvas mask) a box is redrawn, up to
    ``max_tries`` draws in all, until :func:`crop_is_balanced`; the last draw is kept if none
    is. Without a label the first draw is kept.
    """
    height, width = canvas_size
    for _ in range(max_tries):
        top = int(rng.integers(height - crop_size + 1))
        left = int(rng.integers(width - crop_size + 1))
        if label is None or crop_is_balanced(label[top:top + crop_size, left:left + crop_size],
                                             max_class_ratio, ignore_index):
            break
    return top, left


class TrainAugment:
    """Training augmentation: random rescale, horizontal flip, padded random crop, normalisation.

    Steps, all drawn from the generator in this order: scale ~ U(scale_range) applied to the
    uint8 image (bilinear) and mask (nearest); flip with probability ``flip_prob``; the image is
    placed at a random offset on a canvas of at least crop×crop (image padded with 0 before
    normalisation, mask padded with 255); crop boxes are drawn by :func:`choose_crop_box`, whose
    class-balance retry uses the mask when one is given. The original ExCEL code passes the
    ground-truth masks of VOC train_aug here (used for nothing else) and no mask for COCO, where
    the first box is kept.

    Returns a dict: ``image`` float32 3×crop×crop (normalised), ``mask`` int64 crop×crop (255
    outside the image and where no mask was given), ``valid_box`` int64 (top, bottom, left,
    right) of the image inside the crop (exclusive ends).
    """

    def __init__(self, crop_size: int = 320, scale_range: tuple[float, float] = (0.5, 2.0),
                 flip_prob: float = 0.5, max_class_ratio: float = 0.75, max_tries: int = 10,
                 normalization: NormalizeMode = "imagenet", ignore_index: int = IGNORE_INDEX) -> None:
        if scale_range[0] > scale_range[1]:
            raise ValueError(f"scale_range must be (low, high) with low <= high, got {scale_range}")
        normalization_constants(normalization)
        self.crop_size = crop_size
        self.scale_range = tuple(scale_range)
        self.flip_prob = flip_prob
        self.max_class_ratio = max_class_ratio
        self.max_tries = max_tries
        self.normalization = normalization
        self.ignore_index = ignore_index

    def __call__(self, image: np.ndarray, mask: np.ndarray | None,
                 rng: np.random.Generator) -> dict[str, Any]:
        scale = rng.uniform(*self.scale_range)
        image, mask = rescale(image, mask, scale)
        if rng.random() < self.flip_prob:
            image = image[:, ::-1]
            mask = mask[:, ::-1] if mask is not None else None
        height, width = image.shape[:2]
        canvas_size = (max(self.crop_size, height), max(self.crop_size, width))
        offset_y = int(rng.integers(canvas_size[0] - height + 1))
        offset_x = int(rng.integers(canvas_size[1] - width + 1))
        inside = (slice(offset_y, offset_y + height), slice(offset_x, offset_x + width))
        image_canvas = np.zeros((*canvas_size, 3), dtype=np.uint8)
        image_canvas[inside] = image
        mask_canvas = np.full(canvas_size, self.ignore_index, dtype=np.uint8)
        if mask is not None:
            mask_canvas[inside] = mask
        top, left = choose_crop_box(mask_canvas if mask is not None else None, self.crop_size,
                                    canvas_size, rng, self.max_class_ratio, self.max_tries,
                                    self.ignore_index)
        window = (slice(top, top + self.crop_size), slice(left, left + self.crop_size))
        valid_box = (max(offset_y - top, 0), min(offset_y + height - top, self.crop_size),
                     max(offset_x - left, 0), min(offset_x + width - left, self.crop_size))
        return {
            "image": normalize(image_canvas[window], self.normalization),
            "mask": torch.from_numpy(mask_canvas[window].astype(np.int64)),
            "valid_box": torch.tensor(valid_box, dtype=torch.int64),
        }


class EvalTransform:
    """Normalise the full-size image; the mask passes through (all 255 when there is none).

    Returns ``image`` float32 3×H×W and ``mask`` int64 H×W; the generator is unused.
    """

    def __init__(self, normalization: NormalizeMode = "imagenet",
                 ignore_index: int = IGNORE_INDEX) -> None:
        normalization_constants(normalization)
        self.normalization = normalization
        self.ignore_index = ignore_index

    def __call__(self, image: np.ndarray, mask: np.ndarray | None,
                 rng: np.random.Generator | None = None) -> dict[str, Any]:
        if mask is None:
            mask_out = torch.full(image.shape[:2], self.ignore_index, dtype=torch.int64)
        else:
            mask_out = torch.from_numpy(mask.astype(np.int64))
        return {"image": normalize(image, self.normalization), "mask": mask_out}
