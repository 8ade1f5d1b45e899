"""The ablation runner: a sweep file's variants × seeds, trained, evaluated and tabulated (mean ± std,
paired differences to the baseline). Resumable: the same command again finishes an interrupted sweep.

    python tools/ablate.py configs/ablations/voc.yaml --work-dir work_dirs/ablate_voc --seeds 0,1,2 [section.key=value ...]
    python tools/ablate.py configs/ablations/voc.yaml --work-dir DIR --launcher slurm --partition gpu --gpus-per-cell 1
"""
from excel.apps.ablate import main

if __name__ == "__main__":
    main()
