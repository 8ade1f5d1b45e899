"""Shared command-line handling of the entry points: --config, overrides, clean error exits."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence

from omegaconf import DictConfig

from excel.checkpoint import CheckpointError
from excel.clip_loader import CLIPLoadError
from excel.config import ConfigError, load_config
from excel.data import DatasetError
from excel.text_enrichment import KnowledgeBankError

USER_ERRORS = (ConfigError, CheckpointError, CLIPLoadError, DatasetError, KnowledgeBankError, FileNotFoundError)


def config_parser(description: str, default_config: str | os.PathLike) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=str(default_config), help=f"YAML config (default: {default_config})")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    return parser


def run_with_config(parser: argparse.ArgumentParser, job: Callable[[DictConfig, argparse.Namespace], object],
                    argv: Sequence[str] | None = None) -> None:
    """Parse, load the config, run `job(cfg, args)`; user errors end with one clear line and exit code 1."""
    args = parser.parse_intermixed_args(argv)
    try:
        job(load_config(args.config, args.overrides), args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
