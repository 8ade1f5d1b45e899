"""Pseudo labels for every image of a split, scored where masks exist (tools/infer_lam.py)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch.nn.functional as F
from omegaconf import DictConfig
from tqdm import tqdm

from excel.builders import build_dataset, build_model, build_par
from excel.config import as_list, save_config
from excel.data.transforms import EvalTransform, denormalize
from excel.engine.checkpoint import load_head_weights
from excel.evaluation.metrics import ConfusionMeter, format_table, save_scores, scores
from excel.io import write_image, write_mask
from excel.labels.predict import ImagePrediction, predict_image
from excel.utils import distributed as dist
from excel.utils.logging import setup_logging
from excel.utils.visualize import cam_overlay

log = logging.getLogger(__name__)


def run_pseudo_labels(cfg: DictConfig, checkpoint: str | os.PathLike | None = None,
                      out_dir: str | os.PathLike | None = None) -> dict | None:
    """Pseudo labels for every image of `cfg.dataset.split` (infer_lam).

    Without `checkpoint`: training-free (docs/method.md §5). With it: dynamic CAMs of the trained model (docs/method.md §9).
    Writes `<out>/pseudo_labels/<id>.png` (pixel value = class index), optional CAM overlays, and, when the
    split has masks, the metric table `<out>/pseudo_label_scores.{txt,json}`. Runs in one process or under
    torchrun (the split is sharded across ranks and the confusion matrices are summed). Returns the scores.
    """
    out_dir = Path(out_dir) if out_dir is not None else Path(cfg.work_dir) / f"pseudo_labels_{cfg.dataset.split}"
    device = dist.resolve_device(cfg.device)
    owns_process_group = not dist.is_distributed()
    dist.init_distributed(device)
    try:
        setup_logging(out_dir / "infer_lam.log")
        model = build_model(cfg, device).eval()
        mode = "training_free"
        if checkpoint is not None:
            load_head_weights(model, checkpoint, source=checkpoint)
            mode = "checkpoint"
        dataset = build_dataset(cfg, cfg.dataset.split, EvalTransform(cfg.dataset.normalize))
        if dist.is_main():
            save_config(cfg, out_dir / "config.yaml")
            log.info("%s pseudo labels for %d images of split %r → %s", mode.replace("_", "-"), len(dataset),
                     cfg.dataset.split, out_dir)
        par = build_par(cfg).to(device)
        meter = ConfusionMeter(cfg.dataset.num_classes + 1)
        for index in tqdm(dist.shard(list(range(len(dataset)))), disable=not dist.is_main(), desc="infer_lam"):
            sample = dataset[index]
            image = sample["image"][None].to(device)
            pred = predict_image(model, image, sample["cls_label"][None].to(device), tuple(sample["size"].tolist()),
                                 mode=mode, input_size=cfg.cam.input_size, box_threshold=cfg.cam.box_threshold,
                                 affinity_layers=cfg.cam.affinity_layers, par=par)
            label = pred.label.cpu()
            write_mask(out_dir / "pseudo_labels" / f"{sample['id']}.png", label.numpy().astype(np.uint8))
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
    write_image(path, overlay, jpeg_quality=90)
