"""Pictures of labels and heat maps as arrays: colour label maps, label overlays and CAM overlays."""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

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
    return cv2.addWeighted(np.ascontiguousarray(image, dtype=np.uint8), 1.0 - alpha, heat_map(cam), alpha, 0.0)


def heat_map(cam: np.ndarray) -> np.ndarray:
    """H×W CAM in [0, 1] (clipped) → H×W×3 uint8 RGB jet colours."""
    heat = cv2.applyColorMap(np.uint8(np.clip(cam, 0.0, 1.0) * 255), cv2.COLORMAP_JET)
    return cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)


def positive_class_cam(cams: torch.Tensor, cls_label: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """The max over the image's positive classes' CAMs (all classes when it has none), C×h×w with a C
    multi-hot label → H×W float32 in [0, 1], upsampled bilinearly to ``size``."""
    present = (cls_label > 0).to(cams.device)
    chosen = cams[present] if present.any() else cams
    cam = F.interpolate(chosen.amax(0)[None, None].float(), size=tuple(size), mode="bilinear", align_corners=False)
    return cam[0, 0].clamp(0, 1).cpu().numpy()


LEGEND_ROW = 22          # pixels per legend entry
LEGEND_SWATCH = 14       # side of a colour swatch
LEGEND_FONT_SCALE = 0.5


def _ascii(text: str) -> str:
    """OpenCV's Hershey fonts draw ASCII only: other characters become '?'."""
    return text.encode("ascii", "replace").decode()


def legend_overlay(image: np.ndarray, label: np.ndarray, label_names: list[str], alpha: float = 0.5) -> np.ndarray:
    """:func:`label_overlay` with a legend strip below it: a swatch and the name of every class present.

    ``image`` H×W×3 uint8, ``label`` H×W class indices into ``label_names`` → (H + legend)×W'×3 uint8,
    W' = max(W, widest legend entry); the legend never covers the prediction.
    """
    colours = voc_palette()
    present = [int(c) for c in np.unique(as_label_map(label)) if c < len(label_names)]
    overlay = label_overlay(image, label, alpha)
    names = [_ascii(label_names[c]) for c in present]
    text_width = max((cv2.getTextSize(n, cv2.FONT_HERSHEY_SIMPLEX, LEGEND_FONT_SCALE, 1)[0][0] for n in names), default=0)
    height, width = overlay.shape[:2]
    canvas = np.full((height + LEGEND_ROW * len(present) + 4, max(width, text_width + LEGEND_ROW + 12), 3), 255,
                     dtype=np.uint8)
    canvas[:height, :width] = overlay
    for row, (c, name) in enumerate(zip(present, names)):
        top = height + 4 + row * LEGEND_ROW
        cv2.rectangle(canvas, (4, top), (4 + LEGEND_SWATCH, top + LEGEND_SWATCH),
                      tuple(int(v) for v in colours[c]), thickness=-1)
        cv2.rectangle(canvas, (4, top), (4 + LEGEND_SWATCH, top + LEGEND_SWATCH), (0, 0, 0), thickness=1)
        cv2.putText(canvas, name, (LEGEND_ROW + 4, top + LEGEND_SWATCH - 2), cv2.FONT_HERSHEY_SIMPLEX,
                    LEGEND_FONT_SCALE, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas
