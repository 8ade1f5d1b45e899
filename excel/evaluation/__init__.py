"""Evaluation: pseudo labels of a split, multi-scale segmentation, DenseCRF, metrics."""
