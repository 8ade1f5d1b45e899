"""Render a :class:`~excel.apps.gallery_rows.Gallery`: a self-contained HTML page and a PNG contact sheet.

The page embeds every picture as a base64 data URI and carries its style and its class filter (a
select and a few lines of inline script) itself: it needs no network and no other file. Each table
row lists its classes in ``data-classes``; the filter shows the rows that contain the chosen class
(preselected by a ``#class=<index>`` fragment in the page's address).
"""
from __future__ import annotations

import base64
import html
import os
from pathlib import Path

import cv2
import numpy as np

from excel.apps.gallery_rows import Gallery, GalleryRow, RowPictures, row_pictures
from excel.io import voc_palette, write_image, write_text
from excel.utils.visualize import colorize

CAPTION_HEIGHT = 20          # contact sheet: pixels of the caption line above each row
HEADER_HEIGHT = 24           # contact sheet: pixels of the column titles
CELL_GAP = 4
FONT = cv2.FONT_HERSHEY_SIMPLEX
FONT_SCALE = 0.45
JPEG_QUALITY = 85

STYLE = """body{font-family:sans-serif;margin:16px;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px;text-align:center;vertical-align:middle}
td.id{font-family:monospace;text-align:left}.swatch{display:inline-block;width:12px;height:12px;margin:0 4px 0 10px;
border:1px solid #444;vertical-align:middle}img{display:block;margin:auto}.none{color:#999}"""

FILTER_SCRIPT = """(function(){var select=document.getElementById('class-filter');
var rows=Array.prototype.slice.call(document.querySelectorAll('#gallery tbody tr'));
var count=document.getElementById('shown');
function apply(){var c=select.value,n=0;rows.forEach(function(r){
var show=c===''||(' '+r.getAttribute('data-classes')+' ').indexOf(' '+c+' ')>=0;
r.style.display=show?'':'none';if(show){n++;}});count.textContent=n;}
var m=/class=(\\d+)/.exec(location.hash);if(m){select.value=m[1];}
select.addEventListener('change',apply);apply();})();"""


def thumbnail(picture: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    """Scale an H×W(×3) picture to fit a size×size box, keeping its aspect ratio."""
    height, width = picture.shape[:2]
    scale = size / max(height, width)
    shape = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(picture, shape, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)


def data_uri(picture: np.ndarray, lossless: bool) -> str:
    """An RGB picture as a PNG (lossless) or JPEG data URI."""
    ext, params, mime = (".png", [], "image/png") if lossless else (".jpg", [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY],
                                                                    "image/jpeg")
    ok, encoded = cv2.imencode(ext, cv2.cvtColor(picture, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {picture.shape} picture as {ext}")
    return f"data:{mime};base64,{base64.b64encode(encoded.tobytes()).decode('ascii')}"


def column_titles(gallery: Gallery) -> list[str]:
    return ["image", *(["CAM"] if gallery.has_cams else []), gallery.kind, "ground truth"]


def row_thumbnails(gallery: Gallery, pictures: RowPictures, size: int) -> list[tuple[np.ndarray | None, bool]]:
    """(thumbnail or None, lossless) per column."""
    cells = [(thumbnail(pictures.image, size), False)]
    if gallery.has_cams:
        cells.append((thumbnail(pictures.cam, size) if pictures.cam is not None else None, False))
    cells.append((thumbnail(colorize(pictures.prediction), size, nearest=True), True))
    cells.append((thumbnail(colorize(pictures.truth), size, nearest=True) if pictures.truth is not None else None, True))
    return cells


def iou_text(row: GalleryRow) -> str:
    return "n/a" if row.iou is None else f"{100 * row.iou:.1f}"


def html_row(gallery: Gallery, row: GalleryRow, cells: list[tuple[np.ndarray | None, bool]]) -> str:
    names = ", ".join(gallery.label_names[c] if c < len(gallery.label_names) else str(c) for c in row.classes)
    parts = [f'<tr data-classes="{" ".join(map(str, row.classes))}" data-iou="{iou_text(row)}">',
             f'<td class="id">{html.escape(row.image_id)}<br><small>{html.escape(names)}</small></td>']
    for picture, lossless in cells:
        parts.append('<td class="none">none</td>' if picture is None else
                     f'<td><img src="{data_uri(picture, lossless)}" width="{picture.shape[1]}" '
                     f'height="{picture.shape[0]}" alt=""></td>')
    parts.append(f'<td class="iou">{iou_text(row)}</td></tr>')
    return "".join(parts)


def page(gallery: Gallery, rows_html: list[str]) -> str:
    """The whole HTML document."""
    palette = voc_palette()
    shown = sorted({c for row in gallery.rows for c in row.classes if c < len(gallery.label_names)})
    options = "".join(f'<option value="{c}">{html.escape(gallery.label_names[c])}</option>' for c in shown)
    legend = "".join(f'<span class="swatch" style="background:rgb({",".join(map(str, palette[c]))})"></span>'
                     f'{html.escape(gallery.label_names[c])}' for c in shown)
    heads = "".join(f"<th>{html.escape(t)}</th>" for t in ["id", *column_titles(gallery), "IoU (%)"])
    title = html.escape(f"{gallery.kind} gallery: {gallery.folder}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{STYLE}</style></head><body>\n<h1>{title}</h1>\n"
            f"<p>{len(gallery.rows)} of {gallery.total} images, worst IoU first (IoU: mean over the classes present "
            f"in the ground truth or the {html.escape(gallery.kind)}). Showing <span id=\"shown\">{len(gallery.rows)}"
            f"</span> rows.</p>\n<p><label>Class: <select id=\"class-filter\"><option value=\"\">all classes</option>"
            f"{options}</select></label></p>\n<p>{legend}</p>\n"
            f'<table id="gallery"><thead><tr>{heads}</tr></thead><tbody>\n' + "\n".join(rows_html) +
            f"\n</tbody></table>\n<script>{FILTER_SCRIPT}</script>\n</body></html>\n")


def _text(canvas: np.ndarray, text: str, origin: tuple[int, int]) -> None:
    cv2.putText(canvas, text.encode("ascii", "replace").decode(), origin, FONT, FONT_SCALE, (0, 0, 0), 1, cv2.LINE_AA)


def sheet_row(row: GalleryRow, cells: list[tuple[np.ndarray | None, bool]], size: int) -> np.ndarray:
    """A caption line (id, IoU) over the row's thumbnails, each centred in a size×size cell."""
    canvas = np.full((CAPTION_HEIGHT + size + CELL_GAP, len(cells) * (size + CELL_GAP), 3), 255, np.uint8)
    _text(canvas, f"{row.image_id}   IoU {iou_text(row)}", (4, CAPTION_HEIGHT - 6))
    for column, (picture, _) in enumerate(cells):
        left = column * (size + CELL_GAP)
        if picture is None:
            _text(canvas, "none", (left + size // 2 - 16, CAPTION_HEIGHT + size // 2))
            continue
        top = CAPTION_HEIGHT + (size - picture.shape[0]) // 2
        left += (size - picture.shape[1]) // 2
        canvas[top:top + picture.shape[0], left:left + picture.shape[1]] = picture
    return canvas


def sheet_header(titles: list[str], size: int) -> np.ndarray:
    canvas = np.full((HEADER_HEIGHT, len(titles) * (size + CELL_GAP), 3), 255, np.uint8)
    for column, title in enumerate(titles):
        _text(canvas, title, (column * (size + CELL_GAP) + 4, HEADER_HEIGHT - 8))
    return canvas


def render(gallery: Gallery, size: int = 192) -> tuple[str, np.ndarray]:
    """(HTML page, contact sheet H×W×3 uint8), reading each row's pictures once."""
    rows_html, sheet = [], [sheet_header(column_titles(gallery), size)]
    for row in gallery.rows:
        cells = row_thumbnails(gallery, row_pictures(row), size)
        rows_html.append(html_row(gallery, row, cells))
        sheet.append(sheet_row(row, cells, size))
    return page(gallery, rows_html), np.concatenate(sheet, axis=0)


def write_gallery(gallery: Gallery, out_dir: str | os.PathLike, size: int = 192) -> tuple[Path, Path]:
    """Write ``gallery.html`` and ``gallery.png`` into ``out_dir`` (atomically); returns their paths."""
    html_text, sheet = render(gallery, size)
    out_dir = Path(out_dir)
    write_text(out_dir / "gallery.html", html_text)
    write_image(out_dir / "gallery.png", sheet)
    return out_dir / "gallery.html", out_dir / "gallery.png"
