"""Convert a checkpoint (the authors' published code, a full-model or a wrapped state dict) into this
project's head checkpoint.

    python tools/convert_checkpoint.py IN OUT [--config configs/voc.yaml [section.key=value ...]]

Options: ``--help``; the code is excel/apps/convert_checkpoint.py (also installed as ``excel-convert-checkpoint``).
"""
from excel.apps.convert_checkpoint import main

if __name__ == "__main__":
    main()
