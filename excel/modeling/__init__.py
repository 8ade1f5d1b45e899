"""The model: frozen CLIP with SVC and LVC, text enrichment, CAMs, the learnable head, ExCEL, its checkpoints."""
