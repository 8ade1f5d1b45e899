"""Pretrain the tiny CLIP of the demo (configs/tiny_clip.json) on synthetic shape scenes, on a CPU.

    python tools/pretrain_tiny_clip.py --out assets/tiny_clip_synthetic.pt

What it trains and how: excel/prep/tiny_clip.py (and assets/README.md for the committed asset).
"""
from excel.prep.tiny_clip import main

if __name__ == "__main__":
    main()
