"""Segment image files with a trained ExCEL head: a class-index PNG and a colour overlay per image.

    python tools/predict.py IMAGE_OR_FOLDER ... --checkpoint CKPT --out DIR [--config CFG] [section.key=value ...]

Options: ``--help``; the code is excel/apps/predict.py (also installed as ``excel-predict``).
"""
from excel.apps.predict import main

if __name__ == "__main__":
    main()
