"""Fully connected CRF post-processing (Krähenbühl & Koltun) of segmentation probabilities.

Numpy and pydensecrf only (the config is read, never imported), so that the functions run cheaply in
worker processes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_softmax

if TYPE_CHECKING:
    from omegaconf import DictConfig


@dataclass(frozen=True)
class DenseCRF:
    """Mean-field DenseCRF with one Gaussian (smoothness) and one bilateral (appearance) kernel.

    Defaults are the published settings (docs/method.md §10): 10 iterations, Gaussian sxy 1 compat 3,
    bilateral sxy 67 srgb 3 compat 4.
    """

    iters: int = 10
    gaussian_sxy: float = 1.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 67.0
    bilateral_srgb: float = 3.0
    bilateral_compat: float = 4.0

    def __call__(self, image: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """Refined marginals C×H×W (float32) from an H×W×3 uint8 RGB image and C×H×W probabilities."""
        num_classes, height, width = probs.shape
        if image.shape != (height, width, 3) or image.dtype != np.uint8:
            raise ValueError(f"image must be a {height}×{width}×3 uint8 array matching the probabilities, "
                             f"got {image.shape} {image.dtype}")
        crf = dcrf.DenseCRF2D(width, height, num_classes)
        crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
        crf.addPairwiseGaussian(sxy=self.gaussian_sxy, compat=self.gaussian_compat)
        crf.addPairwiseBilateral(sxy=self.bilateral_sxy, srgb=self.bilateral_srgb,
                                 rgbim=np.ascontiguousarray(image), compat=self.bilateral_compat)
        return np.asarray(crf.inference(self.iters), dtype=np.float32).reshape(num_classes, height, width)


def build_crf(cfg: DictConfig) -> DenseCRF | None:
    """DenseCRF with crf.* parameters, or None when crf.enabled is false (docs/method.md §10)."""
    c = cfg.crf
    if not c.enabled:
        return None
    return DenseCRF(c.iters, c.gaussian_sxy, c.gaussian_compat, c.bilateral_sxy, c.bilateral_srgb, c.bilateral_compat)


def crf_refine(image: np.ndarray, probs: np.ndarray, crf: DenseCRF = DenseCRF()) -> np.ndarray:
    """H×W uint8 labels: argmax of the DenseCRF marginals of C×H×W probabilities on an H×W×3 uint8 image."""
    return crf(image, probs).argmax(axis=0).astype(np.uint8)


def upsample_logits(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize (half-pixel centres, as torch's align_corners=False) of C×h×w logits to C×H×W float32."""
    logits = np.asarray(logits, dtype=np.float32)
    if logits.shape[1:] == tuple(size):
        return logits
    resized = cv2.resize(logits.transpose(1, 2, 0), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return resized.reshape(size[0], size[1], -1).transpose(2, 0, 1)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the first (class) axis."""
    shifted = np.exp(logits - logits.max(axis=0, keepdims=True))
    return shifted / shifted.sum(axis=0, keepdims=True)


def crf_from_logits(image: np.ndarray, logits: np.ndarray, crf: DenseCRF = DenseCRF()) -> np.ndarray:
    """H×W uint8 CRF labels from C×h×w logits (any resolution; upsampled to the image size first)."""
    return crf_refine(image, softmax(upsample_logits(logits, image.shape[:2])), crf)
