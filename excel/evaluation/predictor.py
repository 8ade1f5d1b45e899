"""Segment single images with a trained ExCEL head: the library entry point (excel-predict is its command).

    predictor = Predictor.from_checkpoint("work_dirs/voc/checkpoints/latest.pth")
    result = predictor.predict("photo.jpg")                 # or an H×W×3 uint8 RGB array
    result.labels                                           # H×W class indices (0 = background)
    result.probabilities                                    # (C+1)×H×W per-pixel class probabilities
    predictor.predict(image, multiscale=False, flip=False, crf=False)   # one scale, fast

Inference is that of tools/infer_seg_*.py (docs/method.md §10): multi-scale + flip logits
(:func:`excel.evaluation.multiscale.multiscale_logits`) and the DenseCRF of :mod:`excel.evaluation.crf`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from excel.builders import build_model
from excel.config import as_list, load_config, load_config_text
from excel.evaluation.crf import build_crf, softmax, upsample_logits
from excel.evaluation.multiscale import check_scales, image_logits
from excel.io import read_image
from excel.modeling.checkpoint import CheckpointError, load_checkpoint, load_head_weights
from excel.modeling.model import ExCEL
from excel.utils.distributed import resolve_device

BACKGROUND_NAME = "background"


@dataclass
class Prediction:
    """One image's segmentation.

    ``labels``: H×W uint8 class indices (0 background, c = ``label_names[c]``).
    ``probabilities``: (C+1)×H×W float32 per-pixel class probabilities: the softmax of the averaged
    multi-scale logits, or the DenseCRF marginals when the CRF is on; ``labels`` is their argmax.
    ``label_names``: C+1 names, background first.
    """

    labels: np.ndarray
    probabilities: np.ndarray
    label_names: list[str]

    def present(self) -> list[str]:
        """Names of the classes that label at least one pixel, in class order."""
        return [self.label_names[c] for c in np.unique(self.labels)]


class Predictor:
    """A loaded model and the inference settings of its config (infer.*, crf.*)."""

    def __init__(self, model: ExCEL, cfg: DictConfig, device: torch.device):
        self.model = model.eval()
        self.cfg = cfg
        self.device = device
        self.label_names = [BACKGROUND_NAME, *as_list(cfg.dataset.categories)]
        self.scales = [float(s) for s in as_list(cfg.infer.scales)]
        check_scales(cfg.infer.resize, self.scales, model.encoder.patch_size)
        self.crf_enabled = bool(cfg.crf.enabled)
        self.crf = build_crf(OmegaConf.merge(cfg, {"crf": {"enabled": True}}))   # crf.* parameters, used per call

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike, config: str | os.PathLike | None = None,
                        overrides: Sequence[str] = (), device: str | None = "auto") -> "Predictor":
        """Build the model and load its head from ``checkpoint``.

        ``config`` defaults to the config stored in the checkpoint (the trainer saves it; so does
        tools/convert_checkpoint.py --config); a checkpoint of the authors' published code stores none
        and needs an explicit config (e.g. configs/voc.yaml). ``overrides``: ``section.key=value``.
        ``device``: auto | cpu | cuda | cuda:N, or None for the config's ``device``.
        """
        state = load_checkpoint(checkpoint)
        if config is not None:
            cfg = load_config(config, overrides)
        elif isinstance(state.get("config"), str):
            cfg = load_config_text(state["config"], f"checkpoint {checkpoint}", overrides)
        else:
            raise CheckpointError(f"checkpoint {checkpoint} stores no config (a published or converted "
                                  "checkpoint); give the config it was trained with, e.g. --config configs/voc.yaml")
        torch_device = resolve_device(cfg.device if device is None else device)
        model = build_model(cfg, torch_device)
        load_head_weights(model, state, source=str(checkpoint))
        return cls(model, cfg, torch_device)

    @torch.inference_mode()
    def logits(self, image: np.ndarray, multiscale: bool | None = None, flip: bool | None = None) -> torch.Tensor:
        """(C+1)×H×W decoder logits of an H×W×3 uint8 RGB image (averaged over scales and flips)."""
        multiscale = len(self.scales) > 1 if multiscale is None else multiscale
        flip = bool(self.cfg.infer.flip) if flip is None else flip
        return image_logits(self.model, image, self.cfg, self.scales if multiscale else [1.0], flip)

    def predict(self, image: np.ndarray | str | os.PathLike, multiscale: bool | None = None,
                flip: bool | None = None, crf: bool | None = None) -> Prediction:
        """Segment one image (H×W×3 uint8 RGB array or an image file).

        ``multiscale`` (infer.scales, else scale 1 only), ``flip`` (infer.flip) and ``crf``
        (crf.enabled, with the crf.* parameters) default to the config.
        """
        image = read_image(image) if isinstance(image, (str, os.PathLike)) else image
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an H×W×3 uint8 RGB image, got "
                             f"{getattr(image, 'shape', type(image).__name__)} {getattr(image, 'dtype', '')}")
        logits = self.logits(image, multiscale, flip).float().cpu().numpy()
        probabilities = softmax(upsample_logits(logits, image.shape[:2]))
        if self.crf_enabled if crf is None else crf:
            probabilities = self.crf(image, probabilities)
        return Prediction(probabilities.argmax(axis=0).astype(np.uint8), probabilities.astype(np.float32),
                          list(self.label_names))

