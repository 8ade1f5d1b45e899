"""The PASCAL VOC test-server submission: where its PNGs go and the archive to upload."""
from __future__ import annotations

import tarfile
from pathlib import Path

from excel.io import atomic_write

VOC_SUBMISSION_DIR = Path("results") / "VOC2012" / "Segmentation" / "comp6_test_cls"


def write_submission_archive(root: Path) -> Path:
    """``<root>/results.tar.gz`` holding results/VOC2012/Segmentation/comp6_test_cls/*.png (atomic)."""
    archive = root / "results.tar.gz"
    folder = root / VOC_SUBMISSION_DIR

    def build(tmp: Path) -> None:
        with tarfile.open(tmp, "w:gz") as tar:
            for png in sorted(folder.glob("*.png")):
                tar.add(png, arcname=str(VOC_SUBMISSION_DIR / png.name))

    atomic_write(archive, build)
    return archive
