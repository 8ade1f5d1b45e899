"""The embedded demo: the paper's ablation, module by module, on synthetic shapes with the tiny CLIP in assets/.

    python tools/demo.py [--quick] [--threads N] [--root data/synthetic] [--work-dir work_dirs/demo] [section.key=value ...]

Steps: draw the dataset if it is missing → training-free pseudo labels on val with CLIP alone, with SVC,
with SVC and TSE → training (static, then dynamic CAMs) → the trained checkpoint's pseudo labels on val
with static and with dynamic (LVC) CAMs → multi-scale (+CRF) segmentation of val → the table of
:data:`ROWS`, also written to <work_dir>/demo_summary.json (mIoU as fractions, wall time in minutes).
`--quick` runs a few iterations on a handful of images (a smoke test of every stage).
"""
import os

# On a shared CPU, OpenMP threads that busy-wait for each other burn several times the useful work;
# let them sleep instead (must be set before torch loads its OpenMP runtime).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from excel.apps.demo import main  # noqa: E402

if __name__ == "__main__":
    main()
