"""Evaluation: pseudo labels of a split, multi-scale segmentation, DenseCRF, single-image prediction."""
