"""The training engine (SPEC §8): one loop for one process, many GPUs (nccl) or CPU processes (gloo).

Per iteration: frozen forward → CAMs (static before lvc.start_iter, dynamic after) → pseudo labels
→ L_seg + aff_weight·L_aff → step of the adapter/decoder only.

Resuming is exact: the data order of epoch e is a permutation seeded by (train.seed, e), every
sample's augmentation is seeded by (train.seed, epoch, index), and the torch RNG (dropout) is saved
with the checkpoint, so a resumed run continues with the very batches and dropout masks that the
uninterrupted run would have used.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from excel import distributed as dist
from excel.checkpoint import load_checkpoint, load_head_weights, save_checkpoint
from excel.config import as_list, save_config
from excel.data import SegmentationDataset, collate, voc_palette
from excel.losses import aff_loss, affinity_targets, seg_loss
from excel.metrics import ConfusionMeter, format_table, save_scores, scores
from excel.model import ExCEL, build_model
from excel.par import PAR
from excel.pseudo_label import par_from_config, predict_image
from excel.refine import last_layers_affinity, pseudo_labels
from excel.schedule import build_optimizer, build_scheduler
from excel.transforms import EvalTransform, TrainAugment, denormalize

log = logging.getLogger("excel")


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss)."""


class EpochIndexSampler(Sampler):
    """Endless (index, epoch) pairs for this rank, starting at iteration `start_iter`.

    Epoch e visits a permutation seeded by seed + e, split across ranks by stride; each rank takes
    whole batches of it (the tail that does not fill a batch is dropped).
    """

    def __init__(self, size: int, batch_size: int, seed: int, start_iter: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.iters_per_epoch = size // world_size // batch_size
        if self.iters_per_epoch == 0:
            raise ValueError(f"the training split has {size} images, fewer than train.batch_size={batch_size} "
                             f"× {world_size} processes")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.start_iter, self.rank, self.world_size = start_iter, rank, world_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, offset = divmod(self.start_iter, self.iters_per_epoch)
        while True:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch))
            mine = order[self.rank::self.world_size][: self.iters_per_epoch * self.batch_size]
            for index in mine[offset * self.batch_size:].tolist():
                yield index, epoch
            epoch, offset = epoch + 1, 0


class EpochAwareDataset(Dataset):
    """Routes the epoch of each (index, epoch) pair to the dataset's augmentation seed."""

    def __init__(self, dataset: SegmentationDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        index, epoch = item
        self.dataset.set_epoch(epoch)
        return self.dataset[index]


def quantised_crop(images: torch.Tensor, normalization: str) -> torch.Tensor:
    """Normalised crops B×3×H×W → the image PAR sees in training: cast to uint8 (truncating), divided by 255."""
    return denormalize(images, normalization).clamp(0, 255).to(torch.uint8) / 255


def dataset_from_config(cfg: DictConfig, split: str, transform, with_mask="auto") -> SegmentationDataset:
    data = cfg.dataset
    if data.root is None:
        raise FileNotFoundError("dataset.root is not set; point it at the dataset folder (see README, "
                                "and prepare split lists with tools/make_splits.py)")
    return SegmentationDataset(data.root, split, data.split_dir, data.name, data.num_classes,
                               image_transform=transform, with_mask=with_mask, seed=cfg.train.seed)


def training_losses(logits: torch.Tensor, affinity: torch.Tensor, labels: torch.Tensor, grid: tuple[int, int],
                    it: int, cfg: DictConfig) -> dict[str, torch.Tensor]:
    """L_seg, L_aff and their weighted sum (SPEC §8, steps 4–6).

    logits: B×(C+1)×h×w decoder logits; affinity: B×hw×hw decoder affinity Â; labels: B×H×W pseudo labels.
    Returns loss, seg, aff and the logits upsampled to H×W (``logits``).
    """
    logits_up = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
    loss_seg = seg_loss(logits_up, labels)
    switch = cfg.train.aff_switch_iter
    aff_labels = logits_up.detach().argmax(dim=1) if switch is not None and it >= switch else labels
    positives, negatives = affinity_targets(aff_labels, grid, cfg.train.aff_radius)
    loss_aff = aff_loss(affinity.float(), positives, negatives)
    return {"loss": loss_seg + cfg.train.aff_weight * loss_aff, "seg": loss_seg, "aff": loss_aff, "logits": logits_up}


def training_step(model: ExCEL, head: nn.Module, images: torch.Tensor, cls_labels: torch.Tensor, it: int,
                  cfg: DictConfig, par: PAR, optimizer: torch.optim.Optimizer,
                  scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler, *,
                  dynamic: bool, amp: bool = False) -> dict[str, torch.Tensor]:
    """One training iteration (SPEC §8) on a batch already on its device.

    images: B×3×H×W normalised crops; cls_labels: B×C multi-hot; ``head`` is ``model.head`` or its
    DistributedDataParallel wrapper; ``dynamic`` selects the LVC CAMs. Frozen forward → CAMs →
    pseudo labels → losses → one optimiser and scheduler step. Raises :class:`TrainingError` when
    the loss is not finite. Returns the detached losses and what the TensorBoard grid shows.
    """
    with torch.autocast(images.device.type, enabled=amp):
        dense = model.encoder(images)
        features, logits, affinity = head(dense.layer_outputs, dense.grid)
    with torch.no_grad():
        cams = model.dynamic_cams(dense, features.float()) if dynamic else model.static_cams(dense)
        layer_aff = last_layers_affinity(dense.attn_maps, cfg.cam.affinity_layers)
        labels = pseudo_labels(cams.float(), cls_labels, layer_aff.float(),
                               quantised_crop(images, cfg.dataset.normalize), images.shape[-2:],
                               cfg.cam.box_threshold, par, affinity.detach().float() if dynamic else None)
    losses = training_losses(logits, affinity, labels, dense.grid, it, cfg)
    loss = losses["loss"]
    if not torch.isfinite(loss):
        raise TrainingError(f"the loss became {loss.item()} at iteration {it}")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return {"loss": loss.detach(), "seg": losses["seg"].detach(), "aff": losses["aff"].detach(),
            "images": images, "cams": cams, "labels": labels, "logits": losses["logits"].detach(), "cls": cls_labels}


class Trainer:
    """Owns the model, optimiser, data and logging of one training run."""

    def __init__(self, cfg: DictConfig, resume: str | None = None):
        self.cfg = cfg
        self.device = dist.resolve_device(cfg.device)
        dist.init_distributed(self.device)
        self.work_dir = Path(cfg.work_dir)
        if dist.is_main():
            self.work_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.work_dir / "config.yaml")
        dist.barrier()
        dist.setup_logging(self.work_dir / "train.log")
        torch.manual_seed(cfg.train.seed + dist.rank())

        self.model: ExCEL = build_model(cfg, self.device)
        self.head = self.model.head
        if dist.is_distributed():
            self.head = DistributedDataParallel(self.model.head, device_ids=[self.device] if self.device.type == "cuda" else None)
        o = cfg.optim
        self.optimizer = build_optimizer(self.model.head.parameters(), o.lr, o.weight_decay, as_list(o.betas), o.eps)
        self.scheduler = build_scheduler(self.optimizer, cfg.train.max_iters, o.warmup_iters, o.warmup_ratio, o.power)
        self.amp = bool(cfg.train.amp) and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.par = par_from_config(cfg).to(self.device)
        self.start_iter = 0
        if resume is not None:
            self._resume(resume)

        augment = TrainAugment(cfg.train.crop_size, tuple(as_list(cfg.train.scale_range)),
                               max_class_ratio=cfg.train.max_class_ratio, normalization=cfg.dataset.normalize)
        train_set = dataset_from_config(cfg, cfg.dataset.train_split, augment)
        sampler = EpochIndexSampler(len(train_set), cfg.train.batch_size, cfg.train.seed, self.start_iter,
                                    dist.rank(), dist.world_size())
        self.loader = DataLoader(EpochAwareDataset(train_set), batch_size=cfg.train.batch_size, sampler=sampler,
                                 num_workers=cfg.train.num_workers, collate_fn=collate,
                                 generator=torch.Generator(), persistent_workers=cfg.train.num_workers > 0,
                                 pin_memory=self.device.type == "cuda")
        self.val_set = dataset_from_config(cfg, cfg.dataset.val_split, EvalTransform(cfg.dataset.normalize), True)
        self.writer = None
        if dist.is_main():
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.work_dir / "tensorboard"))
        self.last_checkpoint: Path | None = Path(resume) if resume else None
        self.history: list[dict[str, float]] = []      # the logged (rank-averaged) losses

    # -- one iteration --------------------------------------------------------------------------
    def dynamic_phase(self, it: int) -> bool:
        return bool(self.cfg.lvc.enabled) and it >= self.cfg.lvc.start_iter

    def train_step(self, batch: dict, it: int) -> dict[str, torch.Tensor]:
        images = batch["image"].to(self.device, non_blocking=True)
        cls_labels = batch["cls_label"].to(self.device, non_blocking=True)
        try:
            return training_step(self.model, self.head, images, cls_labels, it, self.cfg, self.par, self.optimizer,
                                 self.scheduler, self.scaler, dynamic=self.dynamic_phase(it), amp=self.amp)
        except TrainingError as err:
            raise TrainingError(f"{err}; stopping. The last good checkpoint is "
                                f"{self.last_checkpoint or 'none (no checkpoint was saved yet)'}") from None

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> Path:
        cfg = self.cfg
        self.model.head.train()
        data = iter(self.loader)
        bar = tqdm(range(self.start_iter, cfg.train.max_iters), initial=self.start_iter, total=cfg.train.max_iters,
                   disable=not dist.is_main(), desc="train", dynamic_ncols=True)
        started = time.time()
        for it in bar:
            if it == cfg.lvc.start_iter and self.dynamic_phase(it):
                log.info("iteration %d: switching to dynamic CAMs (LVC)", it)
            step = self.train_step(next(data), it)
            done = it + 1
            if done % cfg.train.log_interval == 0 or done == cfg.train.max_iters:
                self._log_step(step, done, started)
            if done % cfg.train.eval_interval == 0 or done == cfg.train.max_iters:
                self.validate(done)
                self.save(done)
        bar.close()
        if self.writer is not None:
            self.writer.close()
        return self.last_checkpoint

    def _log_step(self, step: dict, it: int, started: float) -> None:
        values = {k: float(dist.all_reduce_sum(step[k].clone()) / dist.world_size()) for k in ("loss", "seg", "aff")}
        lr = self.optimizer.param_groups[0]["lr"]
        self.history.append({"iter": it, "lr": lr, **values})
        log.info("iter %d/%d  loss %.4f  seg %.4f  aff %.4f  lr %.3e  %.2fs/it%s", it, self.cfg.train.max_iters,
                 values["loss"], values["seg"], values["aff"], lr,
                 (time.time() - started) / max(1, it - self.start_iter), "  (dynamic)" if self.dynamic_phase(it - 1) else "")
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(f"train/{key}", value, it)
            self.writer.add_scalar("train/lr", lr, it)
            self.writer.add_image("train/image_cam_pseudo_pred", visual_grid(step, self.cfg.dataset.normalize), it)

    # -- validation and checkpoints ------------------------------------------------------------
    @torch.no_grad()
    def validate(self, it: int) -> dict[str, float]:
        """Pseudo-label mIoU (static CAMs, Â-weighted affinity, val threshold) and decoder mIoU on the val split."""
        cfg, num = self.cfg, self.cfg.dataset.num_classes + 1
        self.model.head.eval()
        indices = list(range(len(self.val_set)))
        if cfg.train.eval_max_images is not None:
            indices = indices[: cfg.train.eval_max_images]
        pseudo, decoder = ConfusionMeter(num), ConfusionMeter(num)
        for index in tqdm(dist.shard(indices), disable=not dist.is_main(), desc="val", leave=False):
            sample = self.val_set[index]
            pred = predict_image(self.model, sample["image"][None].to(self.device), sample["cls_label"][None].to(self.device),
                                 tuple(sample["mask"].shape), mode="validation", input_size=cfg.cam.input_size,
                                 box_threshold=cfg.cam.val_box_threshold, affinity_layers=cfg.cam.affinity_layers,
                                 par=self.par, with_decoder=True)
            mask = sample["mask"].to(self.device)
            pseudo.update(pred.label, mask)
            decoder.update(pred.decoder, mask)
        self.model.head.train()
        results = {}
        names = ["background", *as_list(cfg.dataset.categories)]
        for name, meter in (("pseudo_label", pseudo), ("decoder", decoder)):
            meter.all_reduce()
            result = scores(meter.matrix)
            results[name] = result["miou"]
            if dist.is_main():
                log.info("iteration %d, %s on %s:\n%s", it, name, cfg.dataset.val_split, format_table(result, names))
                save_scores(result, names, self.work_dir / "metrics" / f"iter_{it:06d}_{name}")
                self.writer.add_scalar(f"val/{name}_miou", result["miou"], it)
        return results

    def save(self, it: int) -> None:
        path = self.work_dir / "checkpoints" / f"iter_{it:06d}.pth"
        if dist.is_main():
            state = {
                "head": self.model.head.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "iteration": it,
                "rng": {"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
                "config": OmegaConf.to_yaml(self.cfg, resolve=True),
                "num_classes": self.cfg.dataset.num_classes,
            }
            save_checkpoint(path, state)
            latest = path.with_name("latest.pth")
            save_checkpoint(latest, state)
            log.info("saved checkpoint %s", path)
        dist.barrier()
        self.last_checkpoint = path

    def _resume(self, path: str) -> None:
        state = load_checkpoint(path)
        load_head_weights(self.model, state, source=path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.start_iter = int(state["iteration"])
        torch.set_rng_state(state["rng"]["torch"])
        if torch.cuda.is_available() and state["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        log.info("resumed from %s at iteration %d", path, self.start_iter)


def visual_grid(step: dict, normalization: str) -> torch.Tensor:
    """3×H×4W image for TensorBoard from the first crop: image | CAM | pseudo label | prediction."""
    image = (denormalize(step["images"][0], normalization).clamp(0, 255) / 255).cpu()
    size = image.shape[-2:]
    present = step["cls"][0] > 0
    cams = step["cams"][0][present] if present.any() else step["cams"][0]
    cam = F.interpolate(cams.amax(0)[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]
    heat = cv2.applyColorMap((cam.clamp(0, 1).cpu().numpy() * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    palette = torch.from_numpy(voc_palette().reshape(-1, 3)[:256]).float() / 255
    tiles = [image, torch.from_numpy(heat.copy()).permute(2, 0, 1).float() / 255,
             palette[step["labels"][0].cpu()].permute(2, 0, 1), palette[step["logits"][0].argmax(0).cpu()].permute(2, 0, 1)]
    return torch.cat(tiles, dim=-1)


def train(cfg: DictConfig, resume: str | None = None) -> Trainer:
    """Train with `cfg` (optionally resuming from a checkpoint); returns the finished trainer."""
    try:
        trainer = Trainer(cfg, resume)
        trainer.run()
        return trainer
    finally:
        dist.cleanup()
