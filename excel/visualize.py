"""Label and heat-map images: VOC palette PNGs, colour label maps and CAM overlays."""
from __future__ import annotations

import os

import cv2
import numpy as np
from PIL import Image

from excel.data import atomic_write, voc_palette

__all__ = ["voc_palette", "save_label_png", "colorize", "label_overlay", "cam_overlay"]


def _check_label(label: np.ndarray) -> np.ndarray:
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label map must be H×W, got shape {label.shape}")
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError(f"label values must lie in 0..255, got {label.min()}..{label.max()}")
    return np.ascontiguousarray(label, dtype=np.uint8)


def save_label_png(label: np.ndarray, path: str | os.PathLike, palette: np.ndarray | None = None) -> None:
    """Write an H×W class-index map as a palette PNG (pixel value = class index, 255 = ignore), atomically.

    ``palette``: 256×3 uint8 colours (default: the VOC palette).
    """
    image = Image.fromarray(_check_label(label))
    image.putpalette((voc_palette() if palette is None else np.asarray(palette, dtype=np.uint8)).tobytes())
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def colorize(label: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """H×W class-index map → H×W×3 uint8 RGB image with the palette colours."""
    return (voc_palette() if palette is None else np.asarray(palette, dtype=np.uint8))[_check_label(label)]


def _check_image(image: np.ndarray, size: tuple[int, int]) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != size:
        raise ValueError(f"image must be H×W×3 with H×W = {size}, got shape {image.shape}")


def label_overlay(image: np.ndarray, label: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the colour label map over an H×W×3 uint8 image: (1 − alpha)·image + alpha·colours."""
    colours = colorize(label)
    _check_image(image, colours.shape[:2])
    return cv2.addWeighted(np.ascontiguousarray(image, dtype=np.uint8), 1.0 - alpha, colours, alpha, 0.0)


def cam_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a jet-coloured heat map of an H×W CAM in [0, 1] over an H×W×3 uint8 RGB image."""
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2:
        raise ValueError(f"cam must be H×W, got shape {cam.shape}")
    _check_image(image, cam.shape)
    heat = cv2.applyColorMap(np.uint8(np.clip(cam, 0.0, 1.0) * 255), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(np.ascontiguousarray(image, dtype=np.uint8), 1.0 - alpha, heat, alpha, 0.0)
