"""A pseudo-label / prediction gallery: a self-contained HTML page and a PNG contact sheet, worst IoU first
(``excel-gallery``, tools/gallery.py; the rows: gallery_rows.py, the pictures: gallery_render.py).

    excel-gallery DIR [--out OUT] [--labels raw|crf|pseudo_labels] [--limit 100] [--thumb 192]

DIR is an output folder of tools/infer_lam.py (pseudo_labels/, cams/ with infer.save_overlays=true) or of
tools/infer_seg_*.py (crf/ or raw/); its config.yaml names the dataset. One row per image: image | CAM
(when available) | pseudo label or prediction | ground truth, with the row's IoU (mean over the classes in
the ground truth or the prediction). Writes OUT/gallery.html and OUT/gallery.png (OUT defaults to DIR).
"""
from __future__ import annotations

import argparse
from typing import Sequence

from excel.apps.gallery_render import write_gallery
from excel.apps.gallery_rows import GalleryError, load_gallery
from excel.cli import run_command


def main(argv: Sequence[str] | None = None) -> None:
    """The command line of ``excel-gallery`` and tools/gallery.py."""
    parser = argparse.ArgumentParser(description="Gallery of pseudo labels or predictions, worst IoU first.")
    parser.add_argument("folder", help="infer_lam or infer_seg output folder")
    parser.add_argument("--out", help="where gallery.html and gallery.png go (default: the folder itself)")
    parser.add_argument("--labels", choices=["pseudo_labels", "crf", "raw"],
                        help="label folder to show (default: pseudo_labels/, else crf/, else raw/)")
    parser.add_argument("--limit", type=int, default=100, help="rows shown: the worst N images (default 100; 0: all)")
    parser.add_argument("--thumb", type=int, default=192, help="thumbnail size in pixels (default 192)")
    args = parser.parse_args(argv)
    if args.limit < 0 or args.thumb < 16:
        parser.error("--limit must be >= 0 and --thumb >= 16")
    out = args.out or args.folder

    def run() -> None:
        gallery = load_gallery(args.folder, args.limit or None, args.labels)
        page, sheet = write_gallery(gallery, out, args.thumb)
        print(f"{len(gallery.rows)} of {gallery.total} images → {page} and {sheet}")

    run_command(run, lambda: out, user_errors=(GalleryError,))
