"""Stage-by-stage timing of ExCEL: the frozen forward, every step of a training iteration, whole
static- and dynamic-phase iterations, training-free pseudo labels and multi-scale inference.

    python tools/benchmark.py [--device cpu|cuda] [--precision fp32|bf16|fp16] [--threads 2] [--repeats 5] [--warmup 1]
                              [--label-size 375 500] [--out DIR] [--config configs/voc.yaml] [section.key=value ...]

The model is the config's (ViT-B/16 for configs/voc.yaml) with random CLIP weights and no text
enrichment unless overridden (``clip.pretrained=null tse.enabled=false`` come first); the batch is
``train.batch_size`` synthetic crops of ``train.crop_size``, each with 1–3 random classes. Each
round times every stage once; a stage's figure is the median over the rounds after the warm-up
ones, also given as a ratio to the frozen forward of the same round (median over rounds): the
training stages to the forward of the batch, the per-image stages to the forward of one image at
``cam.input_size``.
``multiscale_forwards`` is the time spent inside the decoder forwards of ``multiscale_inference``
(measured in the same calls), the reference of its ratio; likewise ``static_iteration_forward`` and
``dynamic_iteration_forward`` are the frozen forwards inside the timed iterations, the references of
the iterations' ratios. A ratio to a forward of the same call is immune to the machine's speed drifting
between stages (on a shared machine one forward took 1.8–2.9 s within minutes). PAR runs in the form
``PAR.resolve_form`` picks for the device (``par_form`` in the report).
Peak memory is the CUDA allocator's peak on a GPU and the process's peak resident size on a CPU.
The report records the date, the machine (CPU model, cores) and the load averages before and after
the run: on a shared machine, compare the ratios, which are measured in one run.

The forward, head and iteration stages run in the config's ``precision`` (``--precision`` sets it).

Writes ``<out>/benchmark_<device>_<precision>.json`` and the same figures as a Markdown table ``.md``, so
runs on other devices or in other precisions sit side by side in one folder.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from excel.apps.benchmark_clock import ForwardClock, InnerForwards, Stage, inner_stages, run_rounds, summarise
from excel.builders import build_model, build_par
from excel.cli import run_command
from excel.config import as_list, load_config
from excel.data.transforms import normalize
from excel.engine.schedule import build_optimizer, build_scheduler
from excel.engine.step import quantised_crop, training_losses, training_step
from excel.evaluation.multiscale import multiscale_logits
from excel.io import atomic_write
from excel.labels.pseudo_label import predict_image, resize_input
from excel.labels.refine import label_maps, labels_from_maps, last_layers_affinity
from excel.modeling.model import ExCEL
from excel.utils.allocator import retain_freed_memory
from excel.utils.distributed import resolve_device
from excel.utils.precision import PRECISIONS, autocast, grad_scaler

RANDOM_WEIGHTS = ["clip.pretrained=null", "tse.enabled=false"]
BATCH_FORWARD, IMAGE_FORWARD = "frozen_forward", "frozen_forward_image"
MULTISCALE, MULTISCALE_FORWARDS = "multiscale_inference", "multiscale_forwards"
STATIC_ITERATION, DYNAMIC_ITERATION = "static_iteration", "dynamic_iteration"
# Upper limits of the ratios (each stage to its reference).
TARGETS = {STATIC_ITERATION: 1.3, DYNAMIC_ITERATION: 1.3, "training_free_label": 1.5, "par": 0.1,
           MULTISCALE: 1.05}


def synthetic_image(batch: int, height: int, width: int, normalization: str, generator: torch.Generator) -> torch.Tensor:
    """B×3×H×W normalised images: smooth random colour regions plus pixel noise, on the 0–255 scale first."""
    coarse = torch.rand(batch, 3, 6, 8, generator=generator) * 255
    pixels = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    pixels = (pixels + 12 * torch.randn(batch, 3, height, width, generator=generator)).clamp(0, 255).round()
    return normalize(pixels, normalization)


def synthetic_labels(batch: int, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """B×C multi-hot labels with 1–3 classes each."""
    labels = torch.zeros(batch, num_classes)
    for row in labels:
        count = int(torch.randint(1, min(3, num_classes) + 1, (1,), generator=generator))
        row[torch.randperm(num_classes, generator=generator)[:count]] = 1
    return labels


def build_stages(model: ExCEL, cfg: DictConfig, device: torch.device, label_size: tuple[int, int],
                 seed: int = 0) -> list[Stage]:
    """Every benchmarked stage on one synthetic batch and one synthetic full-size image. The iterations
    time the frozen forward inside them, the multi-scale stage its decoder forwards (``Stage.inner``)."""
    generator = torch.Generator().manual_seed(seed)
    crop, batch, normalization = cfg.train.crop_size, cfg.train.batch_size, cfg.dataset.normalize
    images = synthetic_image(batch, crop, crop, normalization, generator).to(device)
    cls_labels = synthetic_labels(batch, cfg.dataset.num_classes, generator).to(device)
    image = synthetic_image(1, *label_size, normalization, generator).to(device)
    image_label = synthetic_labels(1, cfg.dataset.num_classes, generator).to(device)

    head = model.head.train()
    optimizer = build_optimizer(cfg, head.parameters())
    scheduler = build_scheduler(cfg, optimizer)
    scaler = grad_scaler(device, cfg.precision)
    par = build_par(cfg).to(device)
    dynamic_iter = int(cfg.lvc.start_iter)

    dense = model.encode(images)
    with torch.no_grad(), autocast(device, cfg.precision):
        features = head(dense.layer_outputs, dense.grid)[0].float()
        cams = model.static_cams(dense)
    layer_aff = last_layers_affinity(dense.attn_maps, cfg.cam.affinity_layers).float()
    par_image = quantised_crop(images, normalization)
    maps = label_maps(cams.float(), cls_labels, layer_aff, (crop, crop), cfg.cam.box_threshold)
    labels = labels_from_maps(par(par_image, maps.maps), maps.keys)

    def forward_head(_: Any = None):
        with autocast(device, cfg.precision):
            return head(dense.layer_outputs, dense.grid)

    def losses(outputs) -> torch.Tensor:
        return training_losses(outputs[1], outputs[2], labels, dense.grid, 0, cfg)["loss"]

    def backward_step(loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()

    def iteration(dynamic: bool) -> Stage:
        name = DYNAMIC_ITERATION if dynamic else STATIC_ITERATION
        it = dynamic_iter if dynamic else 0
        clock = ForwardClock(model.encoder.forward, device)

        def run(_: Any = None):
            return clock.measure_module(model.encoder, lambda: training_step(
                model, images, cls_labels, it, cfg, par, optimizer, scheduler, scaler, dynamic=dynamic))

        phase = "dynamic phase (LVC)" if dynamic else "static phase"
        return Stage(name, f"whole training iteration, {phase}", f"{name}_forward", run,
                     inner=InnerForwards(f"{name}_forward", f"the frozen forward inside {name}", BATCH_FORWARD, clock))

    segment_clock = ForwardClock(model.segment, device)
    scales = [float(s) for s in as_list(cfg.infer.scales)]
    return [
        Stage(BATCH_FORWARD, f"frozen CLIP forward with SVC, {batch}×3×{crop}×{crop}", BATCH_FORWARD,
              lambda _: model.encode(images)),
        Stage("head_forward", "adapter + decoder + decoder affinity (training mode)", BATCH_FORWARD, forward_head),
        Stage("static_cam", "static CAMs (surgery)", BATCH_FORWARD, lambda _: model.static_cams(dense)),
        Stage("dynamic_cam", "dynamic CAMs (LVC from the cached stream)", BATCH_FORWARD,
              lambda _: model.dynamic_cams(dense, features)),
        Stage("affinity_refinement", "transition matrix, class boxes, propagation, resize to the crop",
              BATCH_FORWARD, lambda _: label_maps(cams.float(), cls_labels, layer_aff, (crop, crop),
                                                  cfg.cam.box_threshold)),
        Stage("par", f"PAR, {cfg.par.iters} iterations on {tuple(maps.maps.shape)} maps", BATCH_FORWARD,
              lambda _: par(par_image, maps.maps, (maps.keys >= 0).sum(dim=1))),
        Stage("losses", "L_seg + L_aff (upsampling, affinity targets)", BATCH_FORWARD, losses, setup=forward_head),
        Stage("backward_step", "backward + optimiser + scheduler step", BATCH_FORWARD, backward_step,
              setup=lambda: losses(forward_head())),
        iteration(dynamic=False),
        iteration(dynamic=True),
        Stage(IMAGE_FORWARD, f"frozen CLIP forward with SVC, 1×3×{cfg.cam.input_size}×{cfg.cam.input_size}",
              IMAGE_FORWARD, lambda _: model.encode(resize_input(image, cfg.cam.input_size))),
        Stage("training_free_label", f"training-free pseudo label of one image, label {label_size[0]}×{label_size[1]}",
              IMAGE_FORWARD,
              lambda _: predict_image(model, image, image_label, label_size, mode="training_free",
                                      input_size=cfg.cam.input_size, box_threshold=cfg.cam.box_threshold,
                                      affinity_layers=cfg.cam.affinity_layers, par=par)),
        Stage(MULTISCALE, f"decoder logits of one image, scales {scales}, flip {bool(cfg.infer.flip)}",
              MULTISCALE_FORWARDS,
              lambda _: segment_clock.measure(lambda: multiscale_logits(segment_clock, image, cfg.infer.resize, scales,
                                                                        cfg.infer.flip, cfg.infer.flip_unit_scale)),
              inner=InnerForwards(MULTISCALE_FORWARDS, "the decoder forwards inside multiscale_inference",
                                  IMAGE_FORWARD, segment_clock)),
    ]


def check_targets(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: {"limit": limit, "reference": results[name]["reference"], "ratio": results[name]["ratio"],
                   "met": results[name]["ratio"] <= limit}
            for name, limit in TARGETS.items()}


def report_stem(device_type: str, precision: str) -> str:
    """File stem of a report: ``benchmark_<device>_<precision>``."""
    return f"benchmark_{device_type}_{precision}"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def markdown_table(report: dict[str, Any]) -> str:
    """The report as a Markdown table plus the targets."""
    setup = report["setup"]
    load = setup["load_average"]
    lines = [f"# ExCEL benchmark ({setup['device']}, {setup['device_name']}, {setup['precision']}, "
             f"{setup['threads']} threads, "
             f"torch {setup['torch']})", "",
             f"{setup['date']}; {setup['cpu']} ({setup['cores']} cores), load averages (1/5/15 min) "
             f"{'/'.join(f'{v:.2f}' for v in load['before'])} before and "
             f"{'/'.join(f'{v:.2f}' for v in load['after'])} after the run. "
             f"Model {setup['model']} (pretrained: {setup['pretrained']}), batch {setup['batch_size']}×"
             f"{setup['crop_size']}², label size {setup['label_size'][0]}×{setup['label_size'][1]}, PAR form "
             f"{setup['par_form']}; medians of {setup['repeats']} rounds after {setup['warmup']} warm-up.", "",
             "| stage | what | median (s) | min (s) | × reference | reference | peak memory (MiB) |",
             "| --- | --- | ---: | ---: | ---: | --- | ---: |"]
    for name, row in report["stages"].items():
        lines.append(f"| {name} | {row['description']} | {row['median_s']:.3f} | {row['min_s']:.3f} | "
                     f"{row['ratio']:.2f} | {row['reference']} | {row['peak_memory_mib']:.0f} |")
    lines += ["", "| target | limit (× reference) | reference | measured | met |", "| --- | ---: | --- | ---: | --- |"]
    for name, target in report["targets"].items():
        lines.append(f"| {name} | {target['limit']:.2f} | {target['reference']} | {target['ratio']:.2f} | "
                     f"{'yes' if target['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def benchmark(cfg: DictConfig, *, threads: int, repeats: int, warmup: int, label_size: tuple[int, int],
              out_dir: str | Path) -> dict[str, Any]:
    """Run every stage, write ``benchmark_<device>_<precision>.json`` and ``.md`` to ``out_dir``; return the
    report. The CPU thread count and the allocator setting apply to CPU runs only (as in training)."""
    device = resolve_device(cfg.device)
    if device.type == "cpu":
        torch.set_num_threads(threads)
        if cfg.train.retain_freed_memory:          # as in training (excel/engine/trainer.py)
            retain_freed_memory()
    load_before = os.getloadavg()
    torch.manual_seed(0)
    model = build_model(cfg, device)
    stages = build_stages(model, cfg, device, label_size)
    run_rounds(stages, device, repeats, warmup)
    results = summarise([*stages, *inner_stages(stages, warmup)])
    par_form = build_par(cfg).resolve_form(device, torch.float32)
    report = {
        "setup": {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": device_name(torch.device("cpu")),
                  "cores": os.cpu_count(), "par_form": par_form,
                  "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
                  "device": device.type, "device_name": device_name(device), "threads": torch.get_num_threads(),
                  "precision": cfg.precision,
                  "torch": torch.__version__, "model": cfg.clip.model, "pretrained": cfg.clip.pretrained,
                  "batch_size": cfg.train.batch_size, "crop_size": cfg.train.crop_size,
                  "input_size": cfg.cam.input_size, "label_size": list(label_size), "repeats": repeats,
                  "warmup": warmup, "config": OmegaConf.to_container(cfg, resolve=True)},
        "stages": results,
        "targets": check_targets(results),
    }
    out_dir = Path(out_dir)
    stem = report_stem(device.type, cfg.precision)
    atomic_write(out_dir / f"{stem}.json", lambda tmp: tmp.write_text(json.dumps(report, indent=2)))
    atomic_write(out_dir / f"{stem}.md", lambda tmp: tmp.write_text(markdown_table(report)))
    print(markdown_table(report))
    print(f"wrote {out_dir / (stem + '.json')} and {out_dir / (stem + '.md')}")
    return report


def main(argv: Sequence[str] | None = None) -> None:
    """The command line of ``excel-benchmark`` and tools/benchmark.py."""
    parser = argparse.ArgumentParser(description="Time every stage of ExCEL training and inference.")
    parser.add_argument("--config", default="configs/voc.yaml", help="YAML config (default: configs/voc.yaml)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--precision", default=None, choices=tuple(PRECISIONS),
                        help="compute precision (default: the config's precision, fp32 unless set)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument("--label-size", type=int, nargs=2, default=(375, 500), metavar=("H", "W"),
                        help="label size of the per-image stages (default 375 500)")
    parser.add_argument("--out", default="work_dirs/benchmark", help="output folder (default work_dirs/benchmark)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    args = parser.parse_intermixed_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1 or min(args.label_size) < 1:
        parser.error("--repeats, --threads and --label-size must be positive and --warmup non-negative")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device} was asked for but CUDA is not available; use --device cpu")

    def run() -> None:
        precision = [f"precision={args.precision}"] if args.precision else []
        cfg = load_config(args.config, [*RANDOM_WEIGHTS, f"device={args.device}", *precision, *args.overrides])
        benchmark(cfg, threads=args.threads, repeats=args.repeats, warmup=args.warmup,
                  label_size=tuple(args.label_size), out_dir=args.out)

    run_command(run, lambda: args.out)
