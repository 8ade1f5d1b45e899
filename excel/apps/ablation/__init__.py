"""The ablation runner: a sweep of config variants × seeds, each cell trained and evaluated through the
project's own training and inference code, summarised as mean ± std and paired differences
(tools/ablate.py, docs/ablations.md)."""
