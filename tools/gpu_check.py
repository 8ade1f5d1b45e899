"""The GPU check: CUDA tests, the benchmark per precision and a timed synthetic training run, in one table.

Options: ``--help``; the code is excel/apps/gpu_check.py.
"""
from excel.apps.gpu_check import main

if __name__ == "__main__":
    main()
