"""A pseudo-label / prediction gallery: a self-contained HTML page and a PNG contact sheet, worst IoU first.

    python tools/gallery.py DIR [--out OUT] [--labels raw|crf|pseudo_labels] [--limit 100] [--thumb 192]

Options: ``--help``; the code is excel/apps/gallery.py (also installed as ``excel-gallery``).
"""
from excel.apps.gallery import main

if __name__ == "__main__":
    main()
