"""From one image to its pseudo label, in the settings of docs/method.md.

* ``training_free`` (infer_lam without checkpoint, docs/method.md §5): static CAMs, attention affinity only.
* ``validation`` (during training, docs/method.md §8): static CAMs, affinity weighted by the decoder's Â.
* ``checkpoint`` (infer_lam with a trained model, docs/method.md §9): the image and its flip in one pass,
  dynamic (LVC) CAMs merged by an element-wise max, Â of the unflipped image.
* ``checkpoint_static``: the same with the static CAMs of that pass (the LVC ablation of a trained model).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from excel.labels.par import PAR
from excel.labels.refine import last_layers_affinity, pseudo_labels
from excel.modeling.cam import min_max_normalize
from excel.modeling.head import decoder_affinity
from excel.modeling.model import ExCEL
from excel.utils.argmax import argmax

MODES = ("training_free", "validation", "checkpoint", "checkpoint_static")
FLIP_MERGE_EPS = 1e-5         # min–max normalisation of the flip-merged dynamic CAMs (§9)


@dataclass
class ImagePrediction:
    """label H×W (pseudo label), cams C×h×w (CAMs it came from), decoder H×W (decoder argmax) or None."""

    label: torch.Tensor
    cams: torch.Tensor
    decoder: torch.Tensor | None


def resize_input(image: torch.Tensor, size: int) -> torch.Tensor:
    """Normalised 1×3×H×W image → 1×3×size×size (bilinear, align_corners=False), docs/method.md §1."""
    return F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False)


def _flip_merged_cams(model: ExCEL, pair_output, dynamic: bool = True) -> torch.Tensor:
    """CAMs of [image, flip] → 1×C×h×w: max with the flipped-back flip, per-class min–max (docs/method.md §9).

    ``dynamic``: LVC's CAMs (the published checkpoint mode), else the static CAMs of the same pass.
    """
    dense = pair_output.dense
    return flip_merge(model.dynamic_cams(dense, pair_output.features) if dynamic else model.static_cams(dense))


def flip_merge(cams: torch.Tensor) -> torch.Tensor:
    """CAMs of [image, flip] 2×C×h×w → 1×C×h×w: element-wise max with the flipped-back flip, then per-class
    min–max with the published epsilon (docs/method.md §9)."""
    merged = torch.maximum(cams[:1], cams[1:].flip(-1))
    return min_max_normalize(merged, dim=(-2, -1), eps=FLIP_MERGE_EPS)


@torch.no_grad()
def predict_image(model: ExCEL, image: torch.Tensor, cls_label: torch.Tensor, label_size: tuple[int, int], *,
                  mode: str, input_size: int, box_threshold: float, affinity_layers: int, par: PAR,
                  with_decoder: bool = False) -> ImagePrediction:
    """Pseudo label of one normalised full-size image 1×3×H×W with image-level label cls_label 1×C."""
    if mode not in MODES:
        raise ValueError(f"unknown pseudo-label mode {mode!r}; use one of {MODES}")
    inputs = resize_input(image, input_size)
    if mode == "training_free" and not with_decoder:
        dense, out = model.encode(inputs), None                   # the head takes no part
    else:
        pair = mode.startswith("checkpoint")
        out = model(torch.cat([inputs, inputs.flip(-1)]) if pair else inputs)
        dense = out.dense
    layer_aff = last_layers_affinity(dense.attn_maps[:, :1], affinity_layers)
    # Â of the image alone: its mean is over this image's similarities, not the [image, flip] pair's.
    decoder_aff = None if mode == "training_free" else decoder_affinity(out.features[:1], model.head.affinity_scale)
    if mode.startswith("checkpoint"):
        cams = _flip_merged_cams(model, out, dynamic=mode == "checkpoint")
    else:
        cams = model.static_cams(dense)[:1]
    label = pseudo_labels(cams, cls_label, layer_aff, inputs, label_size, box_threshold, par, decoder_aff)[0]
    decoder = None
    if with_decoder:
        logits = F.interpolate(out.logits[:1], size=label_size, mode="bilinear", align_corners=False)
        decoder = argmax(logits, dim=1)[0]
    return ImagePrediction(label=label, cams=cams[0], decoder=decoder)
