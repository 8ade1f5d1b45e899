"""Pictures of labels and heat maps as arrays: colour label maps, label overlays and CAM overlays."""
from __future__ import annotations

import cv2
import numpy as np

from excel.io import as_label_map, voc_palette


def colorize(label: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """H×W class-index map → H×W×3 uint8 RGB image with the palette colours."""
    return (voc_palette() if palette is None else np.asarray(palette, dtype=np.uint8))[as_label_map(label)]


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
