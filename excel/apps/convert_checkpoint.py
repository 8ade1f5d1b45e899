"""Convert a checkpoint (the authors' published code, a full-model or a wrapped state dict) into this
project's checkpoint format: ``{'head', 'num_classes', 'iteration'[, 'config']}``.

    excel-convert-checkpoint IN OUT [--config configs/voc.yaml [section.key=value ...]]

Everything that is not the head (the frozen CLIP weights) is left out. With --config the head is checked
against that config (head.*, dataset.num_classes) and the config is stored in OUT, so that OUT can be used
without --config afterwards (excel-predict, excel.Predictor.from_checkpoint).
OUT never lies inside a dataset, never is IN, and replaces an existing file only if that file is itself a
head-only checkpoint (never a resumable training checkpoint or any other file).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence

from omegaconf import OmegaConf

from excel.builders import build_head
from excel.cli import run_command
from excel.config import load_config
from excel.data.layout import dataset_folders
from excel.io import check_output_file
from excel.modeling.checkpoint import (
    TRAINING_KEYS,
    CheckpointError,
    head_checkpoint,
    load_checkpoint,
    load_head_weights,
    save_checkpoint,
)


class _Head:
    """The part of ExCEL that load_head_weights checks against: `.head` and `.num_classes`."""

    def __init__(self, cfg, head_state: dict, source: str):
        layers = sum(1 for key in head_state if key.startswith("adapter.mlps.") and key.endswith(".0.weight"))
        if "adapter.mlps.0.0.weight" not in head_state:
            raise CheckpointError(f"checkpoint {source} has no adapter weights (adapter.mlps.0.0.weight); "
                                  "it holds only part of a head")
        self.head = build_head(cfg, layers, head_state["adapter.mlps.0.0.weight"].shape[1])
        self.num_classes = cfg.dataset.num_classes


def check_replaceable(source: Path, target: Path) -> None:
    """Refuse to write ``target`` over ``source`` or over an existing file that is not a head-only checkpoint."""
    if not target.exists():
        return
    if source.exists() and os.path.samefile(source, target):
        raise CheckpointError(f"OUT {target} is IN itself; converting in place would replace it with a head-only "
                              "file: give another OUT")
    try:
        existing = load_checkpoint(target)
    except CheckpointError:
        raise CheckpointError(f"OUT {target} exists and is not a checkpoint; it is not replaced: give another OUT "
                              "or remove the file first") from None
    if all(key in existing for key in TRAINING_KEYS):
        raise CheckpointError(f"OUT {target} is a resumable training checkpoint (optimizer, scheduler, RNG); it is "
                              "not replaced with a head-only file: give another OUT")


def convert(args: argparse.Namespace) -> None:
    cfg = load_config(args.config, args.overrides) if args.config is not None else None
    protected = dataset_folders(Path(cfg.dataset.root)) if cfg is not None and cfg.dataset.root is not None else ()
    output = check_output_file(args.output, protected)
    check_replaceable(Path(args.input), output)
    converted = head_checkpoint(load_checkpoint(args.input), str(args.input))
    if cfg is not None:
        load_head_weights(_Head(cfg, converted["head"], str(args.input)), converted, source=str(args.input))
        converted["config"] = OmegaConf.to_yaml(cfg, resolve=True)
    save_checkpoint(args.output, converted)
    print(f"wrote {args.output}: {len(converted['head'])} head tensors, {converted['num_classes']} classes"
          + ("" if args.config is None else f", config {args.config}"))


def main(argv: Sequence[str] | None = None) -> None:
    """The command line of ``excel-convert-checkpoint`` and tools/convert_checkpoint.py."""
    parser = argparse.ArgumentParser(description="Convert a checkpoint into this project's head checkpoint.")
    parser.add_argument("input", help="checkpoint to convert (.pth)")
    parser.add_argument("output", help="converted checkpoint to write (.pth)")
    parser.add_argument("--config", help="config to check the head against and to store in the output")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides (with --config)")
    args = parser.parse_intermixed_args(argv)
    run_command(lambda: convert(args), lambda: Path(args.output).parent)


if __name__ == "__main__":
    main()
