"""Pseudo labels for every image of a split, scored where masks exist (tools/infer_lam.py)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from excel.builders import build_dataset, build_model, build_par
from excel.config import as_list, save_config
from excel.data.layout import dataset_folders
from excel.data.transforms import EvalTransform, denormalize
from excel.evaluation.reuse import RECORD_FILE, begin_record, check_reuse, output_settings, record_settings
from excel.io import (
    check_output_folder,
    check_split_name,
    output_path,
    read_output_mask,
    write_image,
    write_mask,
)
from excel.labels.pseudo_label import ImagePrediction, predict_image
from excel.metrics import ConfusionMeter, format_table, save_scores, scores
from excel.modeling.checkpoint import load_head_weights
from excel.utils import distributed as dist
from excel.utils.logging import setup_logging
from excel.utils.visualize import cam_overlay, positive_class_cam

log = logging.getLogger(__name__)


def run_pseudo_labels(cfg: DictConfig, checkpoint: str | os.PathLike | None = None,
                      out_dir: str | os.PathLike | None = None) -> dict | None:
    """Pseudo labels for every image of `cfg.dataset.split` (infer_lam).

    Without `checkpoint`: training-free (docs/method.md §5). With it: dynamic CAMs of the trained model (docs/method.md §9).
    Writes `<out>/pseudo_labels/<id>.png` (pixel value = class index), optional CAM overlays, and, when the
    split has masks, the metric table `<out>/pseudo_label_scores.{txt,json}`. With `infer.skip_existing`
    images whose outputs exist are not recomputed; their labels are read back, so the scores stay complete
    (only outputs made with the same settings are reused: :mod:`excel.evaluation.reuse`).
    Runs in one process or under torchrun (the split is sharded across ranks and the confusion matrices are
    summed). Returns the scores.
    """
    if out_dir is None:
        out_dir = Path(cfg.work_dir) / f"pseudo_labels_{check_split_name(cfg.dataset.split)}"
    out_dir = Path(out_dir)
    device = dist.resolve_device(cfg.device)
    owns_process_group = not dist.is_distributed()
    dist.init_distributed(device)
    try:
        outputs = LamOutputs(out_dir, bool(cfg.infer.save_overlays))
        outputs.check_destination(cfg.dataset.root)
        settings = output_settings(cfg, checkpoint, cfg.dataset.split)
        consistent = check_reuse(out_dir, settings, bool(cfg.infer.skip_existing), [outputs.labels])
        setup_logging(out_dir / "infer_lam.log")
        model = build_model(cfg, device).eval()
        mode = "training_free"
        if checkpoint is not None:
            load_head_weights(model, checkpoint, source=checkpoint)
            mode = "checkpoint"
        dataset = build_dataset(cfg, cfg.dataset.split, EvalTransform(cfg.dataset.normalize))
        if dist.is_main():
            save_config(cfg, out_dir / "config.yaml")
            begin_record(out_dir, settings, consistent)
            log.info("%s pseudo labels for %d images of split %r → %s", mode.replace("_", "-"), len(dataset),
                     cfg.dataset.split, out_dir)
        par = build_par(cfg).to(device)
        meter = ConfusionMeter(cfg.dataset.num_classes + 1)
        skipped = 0
        for index in tqdm(dist.shard(list(range(len(dataset)))), disable=not dist.is_main(), desc="infer_lam"):
            sample = dataset[index]
            if cfg.infer.skip_existing and outputs.complete(sample["id"]):
                size = tuple(sample["size"].tolist())
                label = torch.from_numpy(read_output_mask(outputs.label_path(sample["id"]), size)).long()
                skipped += 1
            else:
                image = sample["image"][None].to(device)
                pred = predict_image(model, image, sample["cls_label"][None].to(device), tuple(sample["size"].tolist()),
                                     mode=mode, input_size=cfg.cam.input_size, box_threshold=cfg.cam.box_threshold,
                                     affinity_layers=cfg.cam.affinity_layers, par=par)
                label = pred.label.cpu()
                outputs.write(sample, pred, label, cfg.dataset.normalize)
            if dataset.has_masks:
                meter.update(label, sample["mask"])
        if skipped:
            log.info("infer.skip_existing: %d images already had their outputs (read back for scoring)", skipped)
        dist.barrier()
        if dist.is_main():
            record_settings(out_dir, settings)
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


class LamOutputs:
    """Per-image outputs of infer_lam: ``pseudo_labels/<id>.png`` and, optionally, ``cams/<id>.jpg``."""

    def __init__(self, root: Path, overlays: bool) -> None:
        self.root = root
        self.labels = root / "pseudo_labels"
        self.cams = root / "cams" if overlays else None

    def check_destination(self, dataset_root: str | None) -> None:
        """Refuse output folders inside a dataset, and sub-folders that link out of the output folder."""
        written = [self.labels, self.cams] if self.cams is not None else [self.labels]
        check_output_folder(self.root, dataset_folders(Path(dataset_root)) if dataset_root is not None else (),
                            inside=[f.name for f in written] + ["config.yaml", RECORD_FILE, "infer_lam.log"])

    def label_path(self, image_id: str) -> Path:
        return output_path(self.labels, image_id, ".png")

    def complete(self, image_id: str) -> bool:
        """All outputs of the image exist (they are written atomically: existing means complete)."""
        paths = [self.label_path(image_id)]
        if self.cams is not None:
            paths.append(output_path(self.cams, image_id, ".jpg"))
        return all(path.is_file() for path in paths)

    def write(self, sample: dict, pred: ImagePrediction, label: torch.Tensor, normalization: str) -> None:
        write_mask(self.label_path(sample["id"]), label.numpy().astype(np.uint8))
        if self.cams is not None:
            _save_cam_overlay(sample, pred, normalization, output_path(self.cams, sample["id"], ".jpg"))


def _save_cam_overlay(sample: dict, pred: ImagePrediction, normalization: str, path: Path) -> None:
    """The image blended with the max over its positive classes' CAMs (upsampled to the image)."""
    image = denormalize(sample["image"], normalization).clamp(0, 255).byte().permute(1, 2, 0).numpy()
    cam = positive_class_cam(pred.cams, sample["cls_label"], image.shape[:2])
    write_image(path, cam_overlay(image, cam), jpeg_quality=90)
