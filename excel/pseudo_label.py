"""From one image to its pseudo label, in the three settings SPEC names.

* ``training_free`` (infer_lam without checkpoint, SPEC §5): static CAMs, attention affinity only.
* ``validation`` (during training, SPEC §8): static CAMs, affinity weighted by the decoder's Â.
* ``checkpoint`` (infer_lam with a trained model, SPEC §9): the image and its flip in one pass,
  dynamic (LVC) CAMs merged by an element-wise max, Â of the unflipped image.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from tqdm import tqdm

from excel import distributed as dist
from excel.checkpoint import load_head_weights
from excel.config import as_list, save_config
from excel.data import SegmentationDataset, atomic_write
from excel.head import decoder_affinity
from excel.metrics import ConfusionMeter, format_table, save_scores, scores
from excel.model import ExCEL, build_model
from excel.par import PAR
from excel.refine import last_layers_affinity, pseudo_labels
from excel.transforms import EvalTransform, denormalize
from excel.visualize import cam_overlay, save_label_png

log = logging.getLogger("excel")

MODES = ("training_free", "validation", "checkpoint")


@dataclass
class ImagePrediction:
    """label H×W (pseudo label), cams C×h×w (CAMs it came from), decoder H×W (decoder argmax) or None."""

    label: torch.Tensor
    cams: torch.Tensor
    decoder: torch.Tensor | None


def par_from_config(cfg: DictConfig) -> PAR:
    """PAR with the config's dilations, iterations and weights."""
    return PAR(dilations=tuple(as_list(cfg.par.dilations)), num_iter=cfg.par.iters,
               color_temperature=cfg.par.color_temperature, position_weight=cfg.par.position_weight)


def resize_input(image: torch.Tensor, size: int) -> torch.Tensor:
    """Normalised 1×3×H×W image → 1×3×size×size (bilinear, align_corners=False), SPEC §1."""
    return F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False)


def _flip_merged_cams(model: ExCEL, pair_output) -> torch.Tensor:
    """Dynamic CAMs of [image, flip] → 1×C×h×w: max with the flipped-back flip, per-class min–max (SPEC §9)."""
    cams = model.dynamic_cams(pair_output.dense, pair_output.features)
    merged = torch.maximum(cams[:1], cams[1:].flip(-1))
    merged = merged - merged.amin(dim=(-2, -1), keepdim=True)
    return merged / (merged.amax(dim=(-2, -1), keepdim=True) + 1e-5)


@torch.no_grad()
def predict_image(model: ExCEL, image: torch.Tensor, cls_label: torch.Tensor, label_size: tuple[int, int], *,
                  mode: str, input_size: int, box_threshold: float, affinity_layers: int, par: PAR,
                  with_decoder: bool = False) -> ImagePrediction:
    """Pseudo label of one normalised full-size image 1×3×H×W with image-level label cls_label 1×C."""
    if mode not in MODES:
        raise ValueError(f"unknown pseudo-label mode {mode!r}; use one of {MODES}")
    inputs = resize_input(image, input_size)
    if mode == "training_free" and not with_decoder:
        dense, out = model.encoder(inputs), None                 # the head takes no part
    else:
        out = model(torch.cat([inputs, inputs.flip(-1)]) if mode == "checkpoint" else inputs)
        dense = out.dense
    layer_aff = last_layers_affinity(dense.attn_maps[:, :1], affinity_layers)
    # Â of the image alone: its mean is over this image's similarities, not the [image, flip] pair's.
    decoder_aff = None if mode == "training_free" else decoder_affinity(out.features[:1], model.head.affinity_scale)
    cams = _flip_merged_cams(model, out) if mode == "checkpoint" else model.static_cams(dense)[:1]
    label = pseudo_labels(cams, cls_label, layer_aff, inputs, label_size, box_threshold, par, decoder_aff)[0]
    decoder = None
    if with_decoder:
        logits = F.interpolate(out.logits[:1], size=label_size, mode="bilinear", align_corners=False)
        decoder = logits.argmax(dim=1)[0]
    return ImagePrediction(label=label, cams=cams[0], decoder=decoder)


def run_pseudo_labels(cfg: DictConfig, checkpoint: str | os.PathLike | None = None,
                      out_dir: str | os.PathLike | None = None) -> dict | None:
    """Pseudo labels for every image of `cfg.dataset.split` (infer_lam).

    Without `checkpoint`: training-free (SPEC §5). With it: dynamic CAMs of the trained model (SPEC §9).
    Writes `<out>/pseudo_labels/<id>.png` (pixel value = class index), optional CAM overlays, and, when the
    split has masks, the metric table `<out>/pseudo_label_scores.{txt,json}`. Runs in one process or under
    torchrun (the split is sharded across ranks and the confusion matrices are summed). Returns the scores.
    """
    out_dir = Path(out_dir) if out_dir is not None else Path(cfg.work_dir) / f"pseudo_labels_{cfg.dataset.split}"
    device = dist.resolve_device(cfg.device)
    owns_process_group = not dist.is_distributed()
    dist.init_distributed(device)
    try:
        dist.setup_logging(out_dir / "infer_lam.log")
        model = build_model(cfg, device).eval()
        mode = "training_free"
        if checkpoint is not None:
            load_head_weights(model, checkpoint, source=checkpoint)
            mode = "checkpoint"
        dataset = SegmentationDataset(cfg.dataset.root, cfg.dataset.split, cfg.dataset.split_dir, cfg.dataset.name,
                                      cfg.dataset.num_classes, image_transform=EvalTransform(cfg.dataset.normalize))
        if dist.is_main():
            save_config(cfg, out_dir / "config.yaml")
            log.info("%s pseudo labels for %d images of split %r → %s", mode.replace("_", "-"), len(dataset),
                     cfg.dataset.split, out_dir)
        par = par_from_config(cfg).to(device)
        meter = ConfusionMeter(cfg.dataset.num_classes + 1)
        for index in tqdm(dist.shard(list(range(len(dataset)))), disable=not dist.is_main(), desc="infer_lam"):
            sample = dataset[index]
            image = sample["image"][None].to(device)
            pred = predict_image(model, image, sample["cls_label"][None].to(device), tuple(sample["size"].tolist()),
                                 mode=mode, input_size=cfg.cam.input_size, box_threshold=cfg.cam.box_threshold,
                                 affinity_layers=cfg.cam.affinity_layers, par=par)
            label = pred.label.cpu()
            save_label_png(label.numpy().astype(np.uint8), out_dir / "pseudo_labels" / f"{sample['id']}.png")
            if cfg.infer.save_overlays:
                _save_cam_overlay(sample, pred, cfg.dataset.normalize, out_dir / "cams" / f"{sample['id']}.jpg")
            if dataset.has_masks:
                meter.update(label, sample["mask"])
        dist.barrier()
        if not dataset.has_masks:
            return None
        meter.all_reduce()
        result = scores(meter.matrix)
        if dist.is_main():
            names = ["background", *as_list(cfg.dataset.categories)]
            log.info("pseudo labels on %s:\n%s", cfg.dataset.split, format_table(result, names))
            save_scores(result, names, out_dir / "pseudo_label_scores")
        return result
    finally:
        if owns_process_group:
            dist.cleanup()


def _save_cam_overlay(sample: dict, pred: ImagePrediction, normalization: str, path: Path) -> None:
    """The image blended with the max over its positive classes' CAMs (upsampled to the image)."""
    image = denormalize(sample["image"], normalization).clamp(0, 255).byte().permute(1, 2, 0).numpy()
    present = sample["cls_label"] > 0
    cams = pred.cams[present.to(pred.cams.device)] if present.any() else pred.cams
    cam = F.interpolate(cams.amax(0)[None, None], size=image.shape[:2], mode="bilinear", align_corners=False)[0, 0]
    overlay = cam_overlay(image, cam.clamp(0, 1).cpu().numpy())
    atomic_write(path, lambda tmp: tmp.write_bytes(cv2.imencode(".jpg", overlay[..., ::-1])[1].tobytes()))
