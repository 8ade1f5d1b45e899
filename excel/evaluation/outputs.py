"""Where and how a segmentation run writes its predictions (the files are listed in excel/evaluation/segment.py)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from excel.data.layout import dataset_folders
from excel.evaluation.voc_submission import VOC_SUBMISSION_DIR
from excel.io import check_outside, output_path, write_image, write_mask
from excel.utils.visualize import colorize, label_overlay


@dataclass(frozen=True)
class OutputLayout:
    """Where predictions of one run go: every per-image file lies inside its folder of ``root``."""

    root: Path
    submission: bool
    overlays: bool
    crf: bool = True

    def folders(self) -> list[Path]:
        """The folders of the per-image files."""
        kinds = ("raw", "crf") if self.crf else ("raw",)
        folders = [*(self.root / k for k in kinds), *(self.root / f"{k}_color" for k in kinds)]
        if self.submission:
            folders.append(self.root / VOC_SUBMISSION_DIR)
        if self.overlays:
            folders.append(self.root / "overlay")
        return folders

    def check_outside_dataset(self, dataset_root: Path) -> None:
        """Refuse output folders inside the dataset's image / mask folders."""
        check_outside(self.root, dataset_folders(dataset_root), "the dataset folder", holds_ids=False)
        for folder in self.folders():
            check_outside(folder, dataset_folders(dataset_root), "the dataset folder")

    def path(self, kind: str, image_id: str) -> Path:
        """The class-index PNG of one prediction (``kind``: raw or crf)."""
        return output_path(self.root / kind, image_id, ".png")

    def final_paths(self, image_id: str) -> list[Path]:
        """The submission PNG and overlay of an image, where asked for."""
        paths = []
        if self.submission:
            paths.append(output_path(self.root / VOC_SUBMISSION_DIR, image_id, ".png"))
        if self.overlays:
            paths.append(output_path(self.root / "overlay", image_id, ".jpg"))
        return paths

    def complete(self, image_id: str) -> bool:
        """Every output of the image exists (all are written atomically: existing means complete)."""
        kinds = ("raw", "crf") if self.crf else ("raw",)
        paths = [*(self.path(k, image_id) for k in kinds),
                 *(output_path(self.root / f"{k}_color", image_id, ".png") for k in kinds),
                 *self.final_paths(image_id)]
        return all(path.is_file() for path in paths)

    def write(self, kind: str, image_id: str, labels: np.ndarray) -> None:
        """Write the class-index and colour PNGs of one prediction (``kind``: raw or crf)."""
        write_mask(self.path(kind, image_id), labels)
        write_image(output_path(self.root / f"{kind}_color", image_id, ".png"), colorize(labels))

    def write_final(self, image_id: str, labels: np.ndarray, image: np.ndarray) -> None:
        """The final prediction of an image: submission PNG and overlay where asked for."""
        if self.submission:
            write_mask(output_path(self.root / VOC_SUBMISSION_DIR, image_id, ".png"), labels)
        if self.overlays:
            write_image(output_path(self.root / "overlay", image_id, ".jpg"), label_overlay(image, labels),
                        jpeg_quality=90)
