"""A timed synthetic training run with AMP, in one table with the benchmark (tools/gpu_check.sh).

Options: ``--help``; the code is excel/apps/gpu_check.py.
"""
from excel.apps.gpu_check import main

if __name__ == "__main__":
    main()
