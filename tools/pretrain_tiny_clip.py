"""Pretrain the tiny CLIP of the demo (configs/tiny_clip.json) on synthetic shape scenes, on a CPU.

    python tools/pretrain_tiny_clip.py --out assets/tiny_clip_synthetic.pt

What it trains and how: excel/prep/tiny_clip.py (and assets/README.md for the committed asset).
"""
import os

# On a shared CPU, OpenMP threads that busy-wait for each other burn several times the useful work;
# let them sleep instead (must be set before torch loads its OpenMP runtime).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from excel.prep.tiny_clip import main  # noqa: E402

if __name__ == "__main__":
    main()
