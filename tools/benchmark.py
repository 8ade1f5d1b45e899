"""Per-stage timing of training, pseudo labels and inference against the frozen forward.

Options: ``--help``; the code is excel/apps/benchmark.py.
"""
from excel.apps.benchmark import main

if __name__ == "__main__":
    main()
