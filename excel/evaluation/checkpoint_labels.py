"""Score a trained checkpoint's pseudo labels on a split with masks, static and dynamic (LVC) CAMs of
the same forward pass (the LVC ablation of one checkpoint, docs/method.md §9). Nothing is written."""
from __future__ import annotations

import os

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from excel.builders import build_dataset, build_model, build_par
from excel.data.transforms import EvalTransform
from excel.labels.pseudo_label import predict_image
from excel.metrics import ConfusionMeter, scores
from excel.modeling.checkpoint import load_head_weights
from excel.utils import distributed as dist

# pseudo-label mode of labels/pseudo_label.py for each kind of CAM
CAM_MODES = {"static": "checkpoint_static", "dynamic": "checkpoint"}


@torch.no_grad()
def score_checkpoint_pseudo_labels(cfg: DictConfig, checkpoint: str | os.PathLike, split: str) -> dict[str, float]:
    """mIoU of the checkpoint's pseudo labels on ``split`` → ``{"static": ..., "dynamic": ...}``.

    Runs in one process or under torchrun (the split is sharded and the confusion matrices summed).
    """
    device = dist.resolve_device(cfg.device)
    model = build_model(cfg, device).eval()
    load_head_weights(model, checkpoint, source=checkpoint)
    par = build_par(cfg).to(device)
    dataset = build_dataset(cfg, split, EvalTransform(cfg.dataset.normalize), with_mask=True)
    meters = {kind: ConfusionMeter(cfg.dataset.num_classes + 1) for kind in CAM_MODES}
    for index in tqdm(dist.shard(list(range(len(dataset)))), disable=not dist.is_main(), desc="checkpoint labels",
                      leave=False):
        sample = dataset[index]
        image, cls_label = sample["image"][None].to(device), sample["cls_label"][None].to(device)
        for kind, mode in CAM_MODES.items():
            pred = predict_image(model, image, cls_label, tuple(sample["size"].tolist()), mode=mode,
                                 input_size=cfg.cam.input_size, box_threshold=cfg.cam.box_threshold,
                                 affinity_layers=cfg.cam.affinity_layers, par=par)
            meters[kind].update(pred.label.cpu(), sample["mask"])
    results = {}
    for kind, meter in meters.items():
        meter.all_reduce()
        results[kind] = scores(meter.matrix)["miou"]
    return results
