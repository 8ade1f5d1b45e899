"""Convert a checkpoint (the authors' published code, a full-model or a wrapped state dict) into this
project's checkpoint format: ``{'head', 'num_classes', 'iteration'[, 'config']}``.

    excel-convert-checkpoint IN OUT [--config configs/voc.yaml [section.key=value ...]]

Everything that is not the head (the frozen CLIP weights) is left out. With --config the head is checked
against that config (head.*, dataset.num_classes) and the config is stored in OUT, so that OUT can be used
without --config afterwards (excel-predict, excel.Predictor.from_checkpoint).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from omegaconf import OmegaConf

from excel.builders import build_head
from excel.cli import run_command
from excel.config import load_config
from excel.modeling.checkpoint import (
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


def convert(args: argparse.Namespace) -> None:
    converted = head_checkpoint(load_checkpoint(args.input), str(args.input))
    if args.config is not None:
        cfg = load_config(args.config, args.overrides)
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
