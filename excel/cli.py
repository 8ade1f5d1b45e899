"""What every entry point shares: --config and overrides, console logging, and user errors as one line.

A user's mistake (a bad key, a missing file, a corrupt image, a checkpoint for another model) ends the
command with ``error: <what and how to fix it>`` on stderr and exit code 1, never a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence

from omegaconf import DictConfig

from excel.config import ConfigError, load_config
from excel.engine.checkpoint import CheckpointError
from excel.io import DatasetError
from excel.modeling.clip_loader import CLIPLoadError
from excel.modeling.text_enrichment import KnowledgeBankError
from excel.utils.logging import setup_logging

USER_ERRORS = (ConfigError, CheckpointError, CLIPLoadError, DatasetError, KnowledgeBankError, FileNotFoundError)


def config_parser(description: str, default_config: str | os.PathLike) -> argparse.ArgumentParser:
    """An argument parser with --config (default ``default_config``) and ``section.key=value`` overrides."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=str(default_config), help=f"YAML config (default: {default_config})")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    return parser


def segmentation_main(default_config: str | os.PathLike, argv: Sequence[str] | None = None) -> None:
    """The command line of tools/infer_seg_*.py: --checkpoint, --split, --out and the config arguments."""
    from excel.evaluation.segment import run_segmentation

    parser = config_parser("Segment a split with a trained ExCEL head (multi-scale + flip, optional DenseCRF, "
                           "mIoU tables).", default_config)
    parser.add_argument("--checkpoint", required=True, help="trained head checkpoint (.pth)")
    parser.add_argument("--split", default="val",
                        help="split list to segment (default: val); names starting with 'test' are not scored")
    parser.add_argument("--out", help="output folder (default: <work_dir>/segment_<split>_<checkpoint name>)")
    run_with_config(parser, lambda cfg, args: run_segmentation(cfg, args.checkpoint, args.split, args.out), argv)


def run_with_config(parser: argparse.ArgumentParser, job: Callable[[DictConfig, argparse.Namespace], object],
                    argv: Sequence[str] | None = None) -> None:
    """Parse (options and overrides in any order), load the config, run ``job(cfg, args)``.

    User errors end with one clear line on stderr and exit code 1.
    """
    args = parser.parse_intermixed_args(argv)
    setup_logging()
    try:
        job(load_config(args.config, args.overrides), args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
