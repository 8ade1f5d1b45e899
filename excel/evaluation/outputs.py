"""Where and how a segmentation run writes its predictions (the files are listed in excel/evaluation/segment.py)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from excel.data.layout import dataset_folders
from excel.evaluation.voc_submission import VOC_SUBMISSION_DIR
from excel.evaluation.reuse import RECORD_FILE
from excel.io import check_output_folder, output_path, write_image, write_mask
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

    def check_destination(self, dataset_root: str | None) -> None:
        """Refuse output folders inside a dataset, and sub-folders that link out of the output folder."""
        written = [str(f.relative_to(self.root)) for f in self.folders()]
        if self.submission:
            written[:0] = ["results", "results.tar.gz"]
        check_output_folder(self.root, dataset_folders(Path(dataset_root)) if dataset_root is not None else (),
                            inside=written + ["config.yaml", RECORD_FILE, "segment.log"])

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
