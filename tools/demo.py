"""The embedded demo: the paper's ablation, module by module, on synthetic shapes with the tiny CLIP in assets/.

    python tools/demo.py [--quick] [--threads N] [--root data/synthetic] [--work-dir work_dirs/demo] [section.key=value ...]

Steps and outputs: excel/apps/demo.py (also installed as ``excel-demo``).
`--quick` runs a few iterations on a handful of images (a smoke test of every stage).
"""
from excel.apps.demo import main

if __name__ == "__main__":
    main()
