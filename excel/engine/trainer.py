"""The training engine (docs/method.md §8): one loop for one process, many GPUs (nccl) or CPU processes (gloo).

Per iteration: frozen forward → CAMs (static before lvc.start_iter, dynamic after) → pseudo labels
→ L_seg + aff_weight·L_aff → step of the adapter/decoder only.

Resuming is exact: the data order of epoch e is a permutation seeded by (train.seed, e), every
sample's augmentation is seeded by (train.seed, epoch, index), and the torch RNG (dropout) is saved
with the checkpoint, so a resumed run continues with the very batches and dropout masks that the
uninterrupted run would have used. With ``train.ema_decay`` > 0, validation and the checkpoints' ``head`` hold a
moving average of the trained head (:mod:`excel.engine.averaging`), which is resumed exactly as well.

Surviving failures: where a start begins (a fresh run, ``--resume CKPT``, ``--resume auto``, a worker group
restarted by torchrun) is decided by :mod:`excel.engine.work_dir`, which also locks the work_dir and keeps
the checkpoints; SIGTERM saves the current iteration and stops (:mod:`excel.utils.stop`); a collective that
fails because a peer is gone ends the rank with one line naming it and the last checkpoint.
"""
from __future__ import annotations

import logging
import re
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from excel.builders import (
    build_dataset,
    build_model,
    build_par,
    build_train_augment,
)
from excel.config import as_list, save_config
from excel.data.dataset import collate
from excel.data.sampler import EpochAwareDataset, EpochIndexSampler, ValidationSamples, per_process_batch
from excel.data.transforms import EvalTransform, denormalize
from excel.engine.averaging import HeadAverage, trained_head_state
from excel.engine.schedule import apply_hyperparameters, build_optimizer, build_scheduler
from excel.engine.step import TrainingError, training_step
from excel.engine.work_dir import (
    LATEST,
    RunLock,
    StartPlan,
    checkpoint_folder,
    checkpoint_name,
    check_work_dir,
    keep_best,
    per_process_batch_note,
    plan_start,
    point_to,
    prepare_work_dir,
    prune_checkpoints,
    run_record,
)
from excel.io import DatasetError, voc_palette
from excel.labels.pseudo_label import predict_image
from excel.metrics import ConfusionMeter, format_table, save_scores, scores
from excel.modeling.checkpoint import (
    check_training_state,
    load_checkpoint,
    load_head_weights,
    save_checkpoint,
)
from excel.modeling.model import ExCEL
from excel.utils import distributed as dist
from excel.utils.allocator import retain_freed_memory
from excel.utils.argmax import argmax
from excel.utils.logging import setup_logging
from excel.utils.precision import grad_scaler
from excel.utils.stop import StopRequest, TrainingStopped
from excel.utils.visualize import heat_map, positive_class_cam

log = logging.getLogger(__name__)



class Trainer:
    """Owns the model, optimiser, data and logging of one training run."""

    def __init__(self, cfg: DictConfig, resume: str | None = None, follow_checkpoint: bool = False):
        """``resume``: None (a fresh start), ``"auto"`` or a checkpoint (see :func:`plan_start`);
        ``follow_checkpoint``: a resumed checkpoint's own work_dir replaces ``cfg.work_dir``."""
        self.cfg = cfg
        self.device = dist.resolve_device(cfg.device)
        dist.init_distributed(self.device, cfg.dist.timeout_s)
        restarted = dist.max_over_ranks(dist.restart_count()) > 0     # agents count their own restarts
        plan = dist.on_main(lambda: plan_start(cfg, resume, follow_checkpoint, restarted, dist.job_id()))
        cfg.work_dir = plan.work_dir
        self.work_dir = Path(cfg.work_dir)
        self.run_id = plan.run_id
        resume = plan.resume
        resume_state = load_checkpoint(resume) if resume is not None else None
        if resume_state is not None:
            check_training_state(resume_state, resume)
        check_work_dir(cfg, resume, resume_state)
        # The data first: a missing or too small dataset is reported before anything is loaded or written.
        train_set = build_dataset(cfg, cfg.dataset.train_split, build_train_augment(cfg))
        self.val_set = build_dataset(cfg, cfg.dataset.val_split, EvalTransform(cfg.dataset.normalize), with_mask=True)
        self.batch_per_process = per_process_batch(cfg.train.batch_size, dist.world_size(), len(train_set),
                                                   cfg.dataset.train_split)
        self._lock: RunLock | None = None
        dist.on_main(lambda: self._prepare_work_dir(plan))
        setup_logging(self.work_dir / "train.log")
        log.info("%s", plan.note)
        if resume_state is not None and (note := per_process_batch_note(resume_state, resume)):
            log.warning("%s", note)
        torch.manual_seed(cfg.train.seed + dist.rank())

        self.model: ExCEL = build_model(cfg, self.device)
        # Gradients are synchronised by the wrapper's forward; only the head has trainable parameters.
        self.net: nn.Module = self.model
        if dist.is_distributed():
            self.net = DistributedDataParallel(self.model, device_ids=[self.device] if self.device.type == "cuda" else None,
                                               broadcast_buffers=False)
        self.optimizer = build_optimizer(cfg, self.model.head.parameters())
        self.scheduler = build_scheduler(cfg, self.optimizer)
        self.scaler = grad_scaler(self.device, cfg.precision)
        self.par = build_par(cfg).to(self.device)
        self.average = HeadAverage(self.model.head, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
        self.start_iter = 0
        if resume is not None:
            self._resume(resume, resume_state)

        sampler = EpochIndexSampler(len(train_set), self.batch_per_process, cfg.train.seed, self.start_iter,
                                    dist.rank(), dist.world_size())
        self.loader = DataLoader(EpochAwareDataset(train_set), batch_size=self.batch_per_process, sampler=sampler,
                                 num_workers=cfg.train.num_workers, collate_fn=collate,
                                 generator=torch.Generator(), persistent_workers=cfg.train.num_workers > 0,
                                 pin_memory=self.device.type == "cuda")
        self.writer = None
        if dist.is_main():
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.work_dir / "tensorboard"))
        self.last_checkpoint: Path | None = Path(resume) if resume else None
        self.history: list[dict[str, float]] = []      # the logged (rank-averaged) losses

    def _prepare_work_dir(self, plan: StartPlan) -> None:
        """Rank 0, before anything is trained: :func:`prepare_work_dir`, then save the config."""
        self._lock = prepare_work_dir(self.work_dir, plan.clear)
        save_config(self.cfg, self.work_dir / "config.yaml")

    def close(self) -> None:
        """Release the work_dir (also done by the system when the process ends)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- one iteration --------------------------------------------------------------------------
    def dynamic_phase(self, it: int) -> bool:
        return bool(self.cfg.lvc.enabled) and it >= self.cfg.lvc.start_iter

    def train_step(self, batch: dict, it: int, check_finite: bool = True) -> dict[str, torch.Tensor]:
        images = batch["image"].to(self.device, non_blocking=True)
        cls_labels = batch["cls_label"].to(self.device, non_blocking=True)
        try:
            step = training_step(self.net, images, cls_labels, it, self.cfg, self.par, self.optimizer,
                                 self.scheduler, self.scaler, dynamic=self.dynamic_phase(it), check_finite=check_finite)
        except TrainingError as err:
            raise TrainingError(f"{err}; stopping. The last good checkpoint is "
                                f"{self.last_checkpoint or 'none (no checkpoint was saved yet)'}") from None
        if self.average is not None:
            self.average.update(self.model.head)
        return step

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> Path:
        """Train from ``start_iter`` to ``train.max_iters``; returns the last checkpoint.

        SIGTERM (on any rank) stops every rank after the current iteration, which is saved first
        (:class:`TrainingStopped`); a collective that fails on a gone or unresponsive peer ends this rank
        with :class:`excel.utils.distributed.PeerLostError`.
        """
        cfg = self.cfg
        self.model.head.train()
        data = iter(self.loader)
        bar = tqdm(range(self.start_iter, cfg.train.max_iters), initial=self.start_iter, total=cfg.train.max_iters,
                   disable=not dist.is_main(), desc="train", dynamic_ncols=True)
        started = time.time()
        it = self.start_iter
        try:
            with StopRequest() as stop:
                for it in bar:
                    if it == cfg.lvc.start_iter and self.dynamic_phase(it):
                        log.info("iteration %d: switching to dynamic CAMs (LVC)", it)
                    done = it + 1
                    logged = done % cfg.train.log_interval == 0 or done == cfg.train.max_iters
                    step = self.train_step(next(data), it, check_finite=logged)     # no host sync in between
                    if logged:
                        self._log_step(step, done, started)
                    if done % cfg.train.eval_interval == 0 or done == cfg.train.max_iters:
                        self.save(done)
                        self.validate_after_save(done)
                    if done < cfg.train.max_iters and stop.agreed():
                        if self.last_checkpoint != checkpoint_folder(self.work_dir) / checkpoint_name(done):
                            self.save(done)
                        raise TrainingStopped(f"stopped by {stop.name} after iteration {done}, saved as "
                                              f"{self.last_checkpoint}; the same command with --resume auto "
                                              "continues from there", stop.signum)
        except RuntimeError as err:
            if not dist.is_peer_failure(err):
                raise
            last = self.last_checkpoint or "none (no checkpoint was saved yet)"
            reason = re.sub(r"^\[[^\]]*\]\s*", "", " ".join(str(err).split()))[:120]    # without gloo's source line
            raise dist.PeerLostError(f"rank {dist.rank()}: another process of this job is gone or did not answer "
                                     f"within dist.timeout_s={cfg.dist.timeout_s:g} s in iteration {it + 1} "
                                     f"({reason}); the last checkpoint is {last}") from None
        finally:
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
    def validate_after_save(self, it: int) -> dict[str, float]:
        """:meth:`validate` right after the checkpoint of ``it`` was saved; an unreadable validation image
        becomes one error that names the image, the saved checkpoint and how to resume. Validation does
        not touch the training RNG, so a resumed run continues exactly as the uninterrupted one."""
        devices = [self.device] if self.device.type == "cuda" else []
        try:
            averaged = self.average.in_place_of(self.model.head) if self.average is not None else nullcontext()
            with torch.random.fork_rng(devices=devices), averaged:
                results = self.validate(it)
            dist.on_main(lambda: keep_best(checkpoint_folder(self.work_dir), it, results["decoder"],
                                           self.cfg.train.keep_checkpoints))
            return results
        except (DatasetError, FileNotFoundError) as err:
            raise DatasetError(f"validation at iteration {it} failed: {err}. The checkpoint was saved at "
                               f"{self.last_checkpoint}; fix the image or remove it from the "
                               f"{self.cfg.dataset.val_split} split list, then continue with "
                               f"--resume {self.last_checkpoint}") from err

    @torch.no_grad()
    def validate(self, it: int) -> dict[str, float]:
        """Pseudo-label mIoU (static CAMs, Â-weighted affinity, val threshold) and decoder mIoU on the val split."""
        cfg, num = self.cfg, self.cfg.dataset.num_classes + 1
        self.model.head.eval()
        indices = list(range(len(self.val_set)))
        if cfg.train.eval_max_images is not None:
            indices = indices[: cfg.train.eval_max_images]
        pseudo, decoder = ConfusionMeter(num), ConfusionMeter(num)
        samples = DataLoader(ValidationSamples(self.val_set, dist.shard(indices)), batch_size=None,
                             num_workers=cfg.train.num_workers)                     # images decoded in workers
        for sample in tqdm(samples, disable=not dist.is_main(), desc="val", leave=False):
            if isinstance(sample, Exception):
                raise sample
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
        """Rank 0 writes ``iter_<it>.pth`` once, points ``latest.pth`` at it and drops the checkpoints beyond
        ``train.keep_checkpoints``; a failed write stops every rank with the same error. A head whose weights
        are no longer finite is never saved (the error names the last good checkpoint)."""
        path = checkpoint_folder(self.work_dir) / checkpoint_name(it)
        if not all(bool(torch.isfinite(p).all()) for p in self.model.head.parameters()):
            raise TrainingError(f"the head's weights became non-finite (NaN or infinite) by iteration {it}; "
                                "stopping without saving them. The last good checkpoint is "
                                f"{self.last_checkpoint or 'none (no checkpoint was saved yet)'}")
        rng = dist.gather_to_main(dist.rng_state(self.device))    # every rank's dropout RNG, for an exact resume
        dist.on_main(lambda: self._write_checkpoint(path, it, rng))
        self.last_checkpoint = path

    def _write_checkpoint(self, path: Path, it: int, rng: list[dict]) -> None:
        state = {
            "head": self.model.head.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "iteration": it,
            "rng": rng[0],
            "rng_ranks": rng,
            "config": OmegaConf.to_yaml(self.cfg, resolve=True),
            "num_classes": self.cfg.dataset.num_classes,
            "run": run_record(self.run_id, dist.job_id()),
        }
        if self.average is not None:
            state.update(self.average.checkpoint_entries(self.model.head))
        save_checkpoint(path, state)
        point_to(path.with_name(LATEST), path)
        log.info("saved checkpoint %s", path)
        prune_checkpoints(path.parent, self.cfg.train.keep_checkpoints)

    def _resume(self, path: str, state: dict) -> None:
        load_head_weights(self.model, trained_head_state(state), source=path)
        if self.average is not None:
            self.average.load(state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.cfg.train.resume_allow_changes:
            apply_hyperparameters(self.cfg, self.optimizer, self.scheduler)
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.start_iter = int(state["iteration"])
        ranks = state.get("rng_ranks") or []
        rng = ranks[dist.rank()] if len(ranks) == dist.world_size() else state["rng"]
        dist.set_rng_state(rng, self.device)
        log.info("resumed from %s at iteration %d", path, self.start_iter)


def visual_grid(step: dict, normalization: str) -> torch.Tensor:
    """3×H×4W image for TensorBoard from the first crop: image | CAM | pseudo label | prediction."""
    image = (denormalize(step["images"][0], normalization).clamp(0, 255) / 255).cpu()
    size = image.shape[-2:]
    heat = heat_map(positive_class_cam(step["cams"][0], step["cls"][0], size))
    palette = torch.from_numpy(voc_palette().reshape(-1, 3)[:256]).float() / 255
    prediction = argmax(step["logits"][0], dim=0).cpu()
    tiles = [image, torch.from_numpy(heat).permute(2, 0, 1).float() / 255,
             palette[step["labels"][0].cpu()].permute(2, 0, 1), palette[prediction].permute(2, 0, 1)]
    return torch.cat(tiles, dim=-1)


def train(cfg: DictConfig, resume: str | None = None, follow_checkpoint: bool = False) -> Trainer:
    """Train with `cfg`; returns the finished trainer. ``resume``: a checkpoint, ``"auto"`` (the newest in
    work_dir, if any) or None; ``follow_checkpoint``: continue in the resumed checkpoint's own work_dir.

    With ``train.retain_freed_memory`` a CPU job's C allocator keeps freed memory from here on
    (excel/utils/allocator.py), so each iteration reuses the pages of the last (GPU tensors: torch's allocator).
    """
    if cfg.train.retain_freed_memory and dist.resolve_device(cfg.device).type == "cpu":
        retain_freed_memory()
    trainer = None
    try:
        trainer = Trainer(cfg, resume, follow_checkpoint)
        trainer.run()
        return trainer
    finally:
        if trainer is not None:
            trainer.close()
        dist.cleanup()
