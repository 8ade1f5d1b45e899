"""A sweep file: a base config, named variants (lists of ``section.key=value`` overrides), the baseline
variant and the metrics to collect. Every mistake in it is one :class:`ConfigError` line naming the file.

    base: ../demo.yaml            # relative to the sweep file
    baseline: full
    metrics: [decoder, decoder_crf]
    variants:
      full: []
      no_lvc: [lvc.enabled=false]
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import yaml
from omegaconf import DictConfig

from excel.apps.ablation.evaluate import METRICS
from excel.config import ConfigError, load_config

SWEEP_KEYS = ("base", "baseline", "metrics", "variants", "description")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class Sweep:
    path: Path
    base: Path
    variants: dict[str, tuple[str, ...]]
    baseline: str
    metrics: tuple[str, ...]

    def config(self, variant: str, overrides: Sequence[str] = ()) -> DictConfig:
        """The base config with the variant's overrides, then ``overrides`` (the command line's)."""
        return load_config(self.base, [*self.variants[variant], *overrides])


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file (keys, variant names and overrides, baseline, metrics)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"sweep file {path} is not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"sweep file {path} must be a mapping with the keys {', '.join(SWEEP_KEYS)}")
    unknown = sorted(set(map(str, data)) - set(SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"sweep file {path}: unknown key {unknown[0]!r}; the keys are {', '.join(SWEEP_KEYS)}")
    for key in ("base", "baseline", "metrics", "variants"):
        if key not in data:
            raise ConfigError(f"sweep file {path}: the key {key!r} is missing")
    base = path.parent / str(data["base"])
    if not base.is_file():
        raise ConfigError(f"sweep file {path}: base config {base} not found (a path relative to the sweep file)")
    variants = _variants(path, data["variants"])
    baseline = str(data["baseline"])
    if baseline not in variants:
        raise ConfigError(f"sweep file {path}: baseline {baseline!r} is not one of the variants "
                          f"({', '.join(variants)})")
    metrics = data["metrics"]
    if not isinstance(metrics, list) or not metrics:
        raise ConfigError(f"sweep file {path}: metrics must be a non-empty list of {', '.join(METRICS)}")
    for metric in metrics:
        if metric not in METRICS:
            raise ConfigError(f"sweep file {path}: unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    return Sweep(path, base, variants, baseline, tuple(dict.fromkeys(metrics)))


def _variants(path: Path, data: object) -> dict[str, tuple[str, ...]]:
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"sweep file {path}: variants must be a non-empty mapping of name → list of "
                          "section.key=value overrides")
    variants = {}
    for name, overrides in data.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigError(f"sweep file {path}: variant name {name!r} must be letters, digits, '_', '.' or '-' "
                              "(it names a folder)")
        if overrides is None:
            overrides = []
        if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
            raise ConfigError(f"sweep file {path}: variant {name!r} must be a list of section.key=value overrides")
        variants[name] = tuple(overrides)
    return variants


def check_variants(sweep: Sweep, overrides: Sequence[str]) -> None:
    """Load every variant's config before anything runs: a bad key fails at once, naming the variant."""
    for name in sweep.variants:
        try:
            sweep.config(name, overrides)
        except ConfigError as err:
            raise ConfigError(f"sweep file {sweep.path}, variant {name!r}: {err}") from None


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` → (0, 1, 2); one line for an empty list, a non-integer, a negative or a repeated seed."""
    items = [item.strip() for item in str(text).split(",")]
    if not text or not all(items):
        raise ConfigError(f"--seeds {text!r}: give a comma-separated list of seeds, e.g. --seeds 0,1,2")
    seeds = []
    for item in items:
        if not re.fullmatch(r"\d+", item):
            raise ConfigError(f"--seeds {text!r}: {item!r} is not a seed (a non-negative integer)")
        seeds.append(int(item))
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ConfigError(f"--seeds {text!r}: seed {repeated[0]} is repeated")
    return tuple(seeds)
