"""A pseudo-label / prediction gallery: a self-contained HTML page and a PNG contact sheet, worst IoU first
(``excel-gallery``, tools/gallery.py; the rows: gallery_rows.py, the pictures: gallery_render.py).

    excel-gallery DIR [--out OUT] [--labels raw|crf|pseudo_labels] [--limit 100] [--thumb 192]

DIR is an output folder of tools/infer_lam.py (pseudo_labels/, cams/ with infer.save_overlays=true) or of
tools/infer_seg_*.py (crf/ or raw/); its config.yaml names the dataset. One row per image: image | CAM
(when available) | pseudo label or prediction | ground truth, with the row's IoU (mean over the classes in
the ground truth or the prediction). Writes OUT/gallery.html and OUT/gallery.png (OUT defaults to DIR; never
inside a dataset).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from excel.apps.gallery_render import write_gallery
from excel.apps.gallery_rows import GalleryError, load_gallery, output_config
from excel.cli import run_command
from excel.data.layout import dataset_folders
from excel.io import check_output_folder

GALLERY_FILES = ("gallery.html", "gallery.png")
MAX_THUMB = 1024                # the contact sheet holds 4 thumbnails a row: 12 MB of pixels a row at 1024


def main(argv: Sequence[str] | None = None) -> None:
    """The command line of ``excel-gallery`` and tools/gallery.py."""
    parser = argparse.ArgumentParser(description="Gallery of pseudo labels or predictions, worst IoU first.")
    parser.add_argument("folder", help="infer_lam or infer_seg output folder")
    parser.add_argument("--out", help="where gallery.html and gallery.png go (default: the folder itself)")
    parser.add_argument("--labels", choices=["pseudo_labels", "crf", "raw"],
                        help="label folder to show (default: pseudo_labels/, else crf/, else raw/)")
    parser.add_argument("--limit", type=int, default=100, help="rows shown: the worst N images (default 100; 0: all)")
    parser.add_argument("--thumb", type=int, default=192,
                        help=f"thumbnail size in pixels, 16..{MAX_THUMB} (default 192)")
    args = parser.parse_args(argv)
    if args.limit < 0 or not 16 <= args.thumb <= MAX_THUMB:
        parser.error(f"--limit must be >= 0 and --thumb between 16 and {MAX_THUMB}")
    out = args.out or args.folder

    def run() -> None:
        check_output_folder(out, inside=GALLERY_FILES)
        gallery = load_gallery(args.folder, args.limit or None, args.labels)
        root = output_config(Path(args.folder)).dataset.root
        check_output_folder(out, dataset_folders(Path(root)) if root is not None else (), inside=GALLERY_FILES)
        page, sheet = write_gallery(gallery, out, args.thumb)
        print(f"{len(gallery.rows)} of {gallery.total} images → {page} and {sheet}")

    run_command(run, lambda: out, user_errors=(GalleryError,))
