"""Segmentation inference with a trained head (docs/method.md §10): multi-scale + flip logits, optional
DenseCRF, mIoU tables, prediction PNGs and the PASCAL VOC test-server submission.

Outputs of :func:`run_segmentation` in ``out_dir``:

* ``raw/<id>.png`` and ``crf/<id>.png``: class-index palette PNGs (pixel value = class index);
  ``raw_color/`` and ``crf_color/``: the same as RGB images; ``overlay/<id>.jpg`` with
  ``infer.save_overlays=true`` (the final prediction blended over the image).
* ``scores_raw.{txt,json}`` and ``scores_crf.{txt,json}``: per-class IoU, precision, recall, mIoU.
* ``config.yaml`` and ``segment.log``.
* With ``infer.skip_existing=true`` an image whose outputs all exist is not segmented again; its raw
  and CRF PNGs are read back and scored, so the tables cover the whole split.
* For a test split (name starting with ``test``, see :func:`is_test_split`) nothing is scored; a
  VOC test split also gets ``results/VOC2012/Segmentation/comp6_test_cls/<id>.png`` (VOC palette;
  the CRF prediction when the CRF is on) and ``results.tar.gz``, ready to upload to the server.

The CRF runs in ``crf.workers`` processes (0: in this process) while the network goes on with the
next images. Each image's averaged logits travel to a worker in memory, at 1/``infer.logit_stride``
of the image resolution (float16 when reduced), and are upsampled back to full size there; nothing
is stored on disk, so the CRF costs no disk space even for the 40,137 COCO val images. The
workers are spawned processes: a script that calls :func:`run_segmentation` needs the usual
``if __name__ == "__main__":`` guard.

Quirk kept from the published VOC inference: at scale 1 the flipped view is left out. The
published COCO inference flips at every scale; ``infer.flip_unit_scale=true`` selects that.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from collections import deque
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from excel.builders import build_dataset, build_model
from excel.config import as_list, save_config
from excel.data.dataset import SegmentationDataset
from excel.data.layout import mask_candidates
from excel.evaluation.crf import build_crf, crf_from_logits
from excel.evaluation.multiscale import check_scales, image_logits, reduce_logits
from excel.evaluation.outputs import OutputLayout
from excel.evaluation.voc_submission import write_submission_archive
from excel.evaluation.reuse import begin_record, check_reuse, output_settings, record_settings
from excel.io import check_split_name, read_output_mask
from excel.metrics import ConfusionMeter, format_table, save_scores
from excel.modeling.checkpoint import load_checkpoint, load_head_weights
from excel.utils.argmax import argmax
from excel.utils.distributed import (
    barrier,
    cleanup,
    init_distributed,
    is_distributed,
    is_main,
    resolve_device,
    shard,
)
from excel.utils.logging import setup_logging
from excel.utils.parent_watch import init_helper_process

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Splits and the CRF worker pool
# ----------------------------------------------------------------------------------------------

def is_test_split(split: str) -> bool:
    """Splits whose name starts with ``test`` have no ground truth: predicted, never scored."""
    return split.startswith("test")


def check_masks(dataset: SegmentationDataset) -> None:
    """Raise, naming the first image without a mask, unless every image of a scored split has one."""
    missing = [item for item in dataset.items if item.mask_path is None]
    if missing:
        looked = ", ".join(map(str, mask_candidates(dataset.root, dataset.dataset, missing[0].image_id,
                                                    dataset.split)))
        raise FileNotFoundError(
            f"split {dataset.split!r} is scored but image {missing[0].image_id!r} has no mask (looked for "
            f"{looked}; {len(missing)} of {len(dataset)} missing). Provide the masks, or use a split whose "
            f"name starts with 'test' to predict without scoring")


class _InlineExecutor(Executor):
    """Runs submitted calls at once in this process (crf.workers = 0)."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def crf_executor(workers: int) -> Executor:
    """A pool of ``workers`` CRF processes (spawned: safe next to CUDA and threads), or inline for 0.

    The workers end themselves when this process dies, even by SIGKILL (they watch their parent), and
    leave Ctrl-C to this process.
    """
    if workers <= 0:
        return _InlineExecutor()
    executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=init_helper_process, initargs=(os.getpid(),))
    if threading.current_thread() is threading.main_thread():
        # Start every worker now with Ctrl-C ignored from birth: a worker still starting up when Ctrl-C
        # arrives would otherwise die mid-import and leave the pool broken.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            executor.submit(int).result()
        finally:
            signal.signal(signal.SIGINT, previous)
    return executor


# ----------------------------------------------------------------------------------------------
# The inference run
# ----------------------------------------------------------------------------------------------

@dataclass
class _Pending:
    image_id: str
    image: np.ndarray
    mask: torch.Tensor | None
    raw: np.ndarray
    crf: Future | None


class SegmentationRun:
    """State of one inference run on this rank: model, meters, outputs, CRF queue."""

    def __init__(self, cfg: DictConfig, checkpoint: dict[str, Any], checkpoint_name: str,
                 dataset: SegmentationDataset, layout: OutputLayout, device: torch.device):
        self.cfg = cfg
        self.dataset = dataset
        self.layout = layout
        self.device = device
        self.scored = not is_test_split(dataset.split)
        self.crf = build_crf(cfg)
        classes = cfg.dataset.num_classes + 1
        self.raw_meter = ConfusionMeter(classes, device)
        self.crf_meter = ConfusionMeter(classes, device)
        self.model = build_model(cfg, device).eval()
        load_head_weights(self.model, checkpoint, source=checkpoint_name)
        self.scales = [float(s) for s in as_list(cfg.infer.scales)]
        check_scales(cfg.infer.resize, self.scales, self.model.encoder.patch_size)

    def reuse(self, sample: dict[str, Any]) -> None:
        """Score an image whose outputs an earlier run wrote (``infer.skip_existing``) from its PNGs."""
        if not self.scored:
            return
        mask = sample["mask"].to(self.device)
        size = tuple(mask.shape)
        self.raw_meter.update(torch.from_numpy(read_output_mask(self.layout.path("raw", sample["id"]), size)).long()
                              .to(self.device), mask)
        if self.crf is not None:
            self.crf_meter.update(torch.from_numpy(read_output_mask(self.layout.path("crf", sample["id"]), size))
                                  .long().to(self.device), mask)

    def start(self, sample: dict[str, Any], executor: Executor) -> _Pending:
        """Raw prediction of one sample (written and scored now) and its CRF job."""
        image = sample["image"]
        logits = image_logits(self.model, image, self.cfg, self.scales, bool(self.cfg.infer.flip))
        raw = argmax(logits, dim=0).to(torch.uint8)
        mask = sample["mask"].to(self.device) if self.scored else None
        if mask is not None:
            self.raw_meter.update(raw, mask)
        raw = raw.cpu().numpy()
        self.layout.write("raw", sample["id"], raw)
        job = None
        if self.crf is not None:
            job = executor.submit(crf_from_logits, image, reduce_logits(logits, self.cfg.infer.logit_stride),
                                  self.crf)
        return _Pending(sample["id"], image, mask, raw, job)

    def finish(self, pending: _Pending) -> None:
        """Collect the CRF result of an image (if any), score it, write the final outputs."""
        final = pending.raw
        if pending.crf is not None:
            final = pending.crf.result()
            self.layout.write("crf", pending.image_id, final)
            if pending.mask is not None:
                self.crf_meter.update(torch.from_numpy(final).to(self.device), pending.mask)
        self.layout.write_final(pending.image_id, final, pending.image)

    def run(self, indices: Sequence[int]) -> None:
        """Segment this rank's images, keeping up to 2·workers + 2 CRF jobs in flight."""
        workers = self.cfg.crf.workers
        max_pending = 2 * max(workers, 0) + 2 if self.crf is not None else 1
        queue: deque[_Pending] = deque()
        progress = tqdm(total=len(indices), desc=f"segment {self.dataset.split}", disable=not is_main(),
                        dynamic_ncols=True)
        with crf_executor(workers if self.crf is not None else 0) as executor:
            for index in indices:
                sample = self.dataset[index]
                if self.cfg.infer.skip_existing and self.layout.complete(sample["id"]):
                    self.reuse(sample)
                    progress.update()
                    continue
                queue.append(self.start(sample, executor))
                while len(queue) >= max_pending:
                    self.finish(queue.popleft())
                    progress.update()
            while queue:
                self.finish(queue.popleft())
                progress.update()
        progress.close()

    def report(self, out_dir: Path) -> dict[str, dict | None]:
        """Sum the confusion matrices over ranks; rank 0 logs and saves the tables."""
        results: dict[str, dict | None] = {"raw": None, "crf": None}
        if not self.scored:
            return results
        names = ["background", *as_list(self.cfg.dataset.categories)]
        for kind, meter in (("raw", self.raw_meter), ("crf", self.crf_meter)):
            if kind == "crf" and self.crf is None:
                continue
            meter.all_reduce()
            results[kind] = meter.scores()
            if is_main():
                log.info("%s segmentation, split %s:\n%s", kind, self.dataset.split,
                            format_table(results[kind], names))
                save_scores(results[kind], names, out_dir / f"scores_{kind}")
        return results


def default_out_dir(work_dir: str | os.PathLike, split: str, checkpoint: str | os.PathLike) -> Path:
    """``<work_dir>/segment_<split>_<checkpoint file stem>``."""
    return Path(work_dir) / f"segment_{check_split_name(split)}_{Path(checkpoint).stem}"


def run_segmentation(cfg: DictConfig, checkpoint: str | os.PathLike, split: str,
                     out_dir: str | os.PathLike | None = None) -> dict[str, dict | None]:
    """Segment every image of ``split`` with the head in ``checkpoint``; write outputs to ``out_dir``.

    Runs in one process or under torchrun (the split is sharded across ranks; scores are summed).
    Returns ``{'raw': scores, 'crf': scores}`` (:func:`excel.metrics.scores` dicts; None when not
    computed: test splits, or the CRF off).
    """
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(cfg.work_dir, split, checkpoint)
    device = resolve_device(cfg.device)
    owns_process_group = not is_distributed()
    init_distributed(device)
    try:
        test = is_test_split(split)
        layout = OutputLayout(out_dir, submission=test and cfg.dataset.name == "voc",
                              overlays=cfg.infer.save_overlays, crf=bool(cfg.crf.enabled))
        layout.check_destination(cfg.dataset.root)
        settings = output_settings(cfg, checkpoint, split)
        consistent = check_reuse(out_dir, settings, bool(cfg.infer.skip_existing), [out_dir / "raw"])
        state = load_checkpoint(checkpoint)
        dataset = build_dataset(cfg, split, with_mask=False if test else "auto", with_labels=False)
        if not test:
            check_masks(dataset)
        setup_logging(out_dir / "segment.log")
        if is_main():
            save_config(cfg, out_dir / "config.yaml")
            begin_record(out_dir, settings, consistent)
            log.info("segmenting %d images of split %r with %s → %s", len(dataset), split, checkpoint, out_dir)
        run = SegmentationRun(cfg, state, str(checkpoint), dataset, layout, device)
        run.run(shard(list(range(len(dataset)))))
        results = run.report(out_dir)
        barrier()
        if is_main():
            record_settings(out_dir, settings)
        if layout.submission and is_main():
            log.info("VOC test submission archive: %s", write_submission_archive(out_dir))
        return results
    finally:
        if owns_process_group:
            cleanup()
