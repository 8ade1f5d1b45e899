"""Statistics of a sweep: per variant and metric the spread over seeds, and the paired (same seed)
difference of every variant to the baseline. Standard deviations are sample ones (n − 1)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence


@dataclass(frozen=True)
class Spread:
    """mean, sample std (None for n < 2), min and max of the values that exist (None = a missing cell)."""
    values: tuple[float | None, ...]
    n: int
    mean: float | None
    std: float | None
    min: float | None
    max: float | None

    def as_dict(self) -> dict:
        return {"values": list(self.values), "n": self.n, "mean": self.mean, "std": self.std,
                "min": self.min, "max": self.max}


def spread(values: Sequence[float | None]) -> Spread:
    """The :class:`Spread` of ``values`` (one per seed, None where the cell has no result)."""
    present = [v for v in values if v is not None]
    n = len(present)
    if n == 0:
        return Spread(tuple(values), 0, None, None, None, None)
    mean = math.fsum(present) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in present) / (n - 1)) if n > 1 else None
    return Spread(tuple(values), n, mean, std, min(present), max(present))


@dataclass(frozen=True)
class PairedDifference:
    """variant − baseline per seed (None where either is missing), their spread, and in how many seeds the
    difference has the sign of the mean difference."""
    spread: Spread
    same_sign: int

    def as_dict(self) -> dict:
        return {**self.spread.as_dict(), "same_sign": self.same_sign}


def paired_difference(values: Sequence[float | None], baseline: Sequence[float | None]) -> PairedDifference:
    """The per-seed differences ``values[i] − baseline[i]`` summarised (seeds aligned by position)."""
    diffs = [v - b if v is not None and b is not None else None for v, b in zip(values, baseline, strict=True)]
    s = spread(diffs)
    sign = 0 if not s.mean else math.copysign(1, s.mean)
    same = sum(1 for d in diffs if d is not None and sign and d != 0 and math.copysign(1, d) == sign)
    return PairedDifference(s, same)


def summarize(results: Mapping[str, Mapping[str, Sequence[float | None]]], baseline: str) -> dict:
    """``results[variant][metric]`` = values in seed order → ``{"variants": {variant: {"metrics": {metric:
    spread}}}, "differences": {variant: {metric: paired difference to the baseline}}}`` (JSON-ready)."""
    variants = {name: {"metrics": {m: spread(v).as_dict() for m, v in metrics.items()}}
                for name, metrics in results.items()}
    differences = {name: {m: paired_difference(v, results[baseline][m]).as_dict() for m, v in metrics.items()}
                   for name, metrics in results.items() if name != baseline}
    return {"variants": variants, "differences": differences}
