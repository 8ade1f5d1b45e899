"""Offline preparation, never imported by training or inference: splits, COCO masks, description files,
knowledge-base banks, synthetic scenes and the tiny CLIP of the demo."""
