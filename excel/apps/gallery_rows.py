"""The rows of a gallery of pseudo labels or predictions: one per image, worst IoU first (the command:
excel/apps/gallery.py).

Reads an output folder of infer_lam (``pseudo_labels/``, optional ``cams/`` CAM overlays) or of
infer_seg (``crf/`` or ``raw/``) with the ``config.yaml`` both write (it names the dataset), and
makes one row per image: image | CAM (when available) | pseudo label or prediction | ground truth,
with the row's IoU. Scores are computed from the label files alone; the pictures of the rows shown
are read one row at a time while rendering, so a large split needs little memory. :mod:`excel.apps.gallery_render` turns the rows into a self-contained HTML page
and a PNG contact sheet.

Row IoU: over the pixels whose ground truth is not ``IGNORE_INDEX``, the mean over the classes that
occur in the ground truth or in the prediction of |P ∩ T| / |P ∪ T|. Rows without a ground-truth mask
have no IoU and come last.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from excel.classes import IGNORE_INDEX
from excel.config import as_list, load_config
from excel.data.layout import find_image, find_mask
from excel.io import DatasetError, read_image, read_mask

PREDICTION_FOLDERS = (("pseudo_labels", "pseudo label"), ("crf", "prediction (CRF)"), ("raw", "prediction"))
CAM_FOLDER = "cams"
CAM_SUFFIXES = (".jpg", ".png")


class GalleryError(ValueError):
    """An output folder the gallery cannot read."""


@dataclass
class GalleryRow:
    """One image: its files and scores (pictures are read by :func:`row_pictures` when rendered)."""

    image_id: str
    label_path: Path
    image_path: Path
    mask_path: Path | None
    cam_path: Path | None
    iou: float | None                       # None without ground truth
    classes: list[int]                      # classes in the prediction or the ground truth


@dataclass
class RowPictures:
    """A row's pictures at full resolution."""

    image: np.ndarray                       # H×W×3 uint8
    prediction: np.ndarray                  # H×W class indices
    truth: np.ndarray | None                # H×W class indices or None
    cam: np.ndarray | None                  # H×W×3 uint8 CAM overlay or None


@dataclass
class Gallery:
    """Rows sorted worst first, plus what the page needs to label them."""

    folder: Path
    kind: str                               # column title of the prediction
    label_names: list[str]                  # C+1, background first
    rows: list[GalleryRow]
    total: int                              # images in the folder (rows may be limited)
    has_cams: bool


def present_classes(prediction: np.ndarray, truth: np.ndarray | None) -> list[int]:
    """Classes occurring in the prediction or in the ground truth (valid ground-truth pixels only)."""
    if truth is None:
        return [int(c) for c in np.unique(prediction)]
    valid = truth != IGNORE_INDEX
    return [int(c) for c in np.union1d(np.unique(prediction[valid]), np.unique(truth[valid]))]


def image_iou(prediction: np.ndarray, truth: np.ndarray) -> float | None:
    """Mean IoU over the classes present in the prediction or the ground truth (valid pixels); None if none."""
    valid = truth != IGNORE_INDEX
    pred, gt = prediction[valid], truth[valid]
    classes = np.union1d(np.unique(pred), np.unique(gt))
    if classes.size == 0:
        return None
    ious = [np.logical_and(pred == c, gt == c).sum() / np.logical_or(pred == c, gt == c).sum() for c in classes]
    return float(np.mean(ious))


def prediction_folder(folder: Path, labels: str | None = None) -> tuple[Path, str]:
    """(folder of class-index PNGs, its column title) inside an infer_lam or infer_seg output folder.

    ``labels`` picks one of PREDICTION_FOLDERS by name; by default the first that exists.
    """
    titles = dict(PREDICTION_FOLDERS)
    if labels is not None and labels not in titles:
        raise GalleryError(f"labels={labels!r}: use one of {', '.join(titles)}")
    for name, title in PREDICTION_FOLDERS:
        if (labels is None or name == labels) and (folder / name).is_dir():
            return folder / name, title
    wanted = f"{labels}/" if labels is not None else ", ".join(name + "/" for name in titles)
    raise GalleryError(f"{folder} is not an infer_lam or infer_seg output folder with {wanted}")


def output_config(folder: Path) -> DictConfig:
    """The config an output folder was written with (its config.yaml)."""
    path = folder / "config.yaml"
    if not path.is_file():
        raise GalleryError(f"{path} not found: the gallery reads the dataset (root, name, split) from the "
                           "config.yaml that tools/infer_lam.py and tools/infer_seg_*.py write")
    return load_config(path)


def _find_cam(folder: Path, image_id: str) -> Path | None:
    for suffix in CAM_SUFFIXES:
        if (folder / CAM_FOLDER / f"{image_id}{suffix}").is_file():
            return folder / CAM_FOLDER / f"{image_id}{suffix}"
    return None


def score_row(cfg: DictConfig, folder: Path, label_path: Path) -> GalleryRow:
    """The row of one prediction file: where its image, mask and CAM overlay are, its IoU and classes."""
    image_id = label_path.stem
    root, name, split = Path(cfg.dataset.root), cfg.dataset.name, cfg.dataset.split
    image_path = find_image(root, name, image_id, split)
    if image_path is None:
        raise GalleryError(f"no image for {label_path.name} under {root} (dataset.root in {folder / 'config.yaml'}); "
                           "point dataset.root at the dataset the folder was made from")
    prediction = read_mask(label_path)
    mask_path = find_mask(root, name, image_id, split)
    truth = read_mask(mask_path) if mask_path is not None else None
    if truth is not None and truth.shape != prediction.shape:
        raise DatasetError(f"{label_path} is {prediction.shape[1]}×{prediction.shape[0]} but its mask {mask_path} "
                           f"is {truth.shape[1]}×{truth.shape[0]}; the folder belongs to another dataset")
    return GalleryRow(image_id, label_path, image_path, mask_path, _find_cam(folder, image_id),
                      image_iou(prediction, truth) if truth is not None else None, present_classes(prediction, truth))


def row_pictures(row: GalleryRow) -> RowPictures:
    """Read a row's image, prediction, ground truth and CAM overlay."""
    image = read_image(row.image_path)
    prediction = read_mask(row.label_path)
    if prediction.shape != image.shape[:2]:
        raise DatasetError(f"{row.label_path} is {prediction.shape[1]}×{prediction.shape[0]} but its image "
                           f"{row.image_path} is {image.shape[1]}×{image.shape[0]}; the folder belongs to another dataset")
    return RowPictures(image, prediction, read_mask(row.mask_path) if row.mask_path is not None else None,
                       read_image(row.cam_path) if row.cam_path is not None else None)


def sort_worst_first(rows: list[GalleryRow]) -> list[GalleryRow]:
    """Rows by IoU ascending (ties by id); rows without IoU last."""
    return sorted(rows, key=lambda r: (r.iou is None, r.iou if r.iou is not None else 0.0, r.image_id))


def load_gallery(folder: str | os.PathLike, limit: int | None = None, labels: str | None = None) -> Gallery:
    """Every prediction of ``folder`` (``labels``: see :func:`prediction_folder`), sorted worst first; only the
    worst ``limit`` rows are kept."""
    folder = Path(folder)
    if not folder.is_dir():
        raise GalleryError(f"folder not found: {folder}")
    label_folder, kind = prediction_folder(folder, labels)
    cfg = output_config(folder)
    files = sorted(label_folder.glob("*.png"))
    if not files:
        raise GalleryError(f"{label_folder} holds no PNG label file")
    rows = sort_worst_first([score_row(cfg, folder, path) for path in files])
    return Gallery(folder, kind, ["background", *as_list(cfg.dataset.categories)],
                   rows[:limit] if limit is not None else rows, len(rows),
                   any(row.cam_path is not None for row in rows))
