"""The method's claims that the demo checks, each a paired per-seed difference of two rows of its table.

A claim holds when its mean difference is at least two sample standard deviations (n − 1) of the
per-seed differences above its floor (0 for "is better than"; −2 points for "is not below"). A row that
does not depend on the seed (the training-free ones) enters every seed's difference with its one value.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from excel.apps.ablation.stats import paired_difference

SIGMAS = 2.0            # how many standard deviations of the per-seed difference a claim must clear


@dataclass(frozen=True)
class Claim:
    text: str           # as README states it
    better: str         # demo_summary.json row
    than: str           # demo_summary.json row
    floor: float = 0.0  # the mean − 2 sd must exceed this (fractions of mIoU)


CLAIMS: tuple[Claim, ...] = (
    Claim("SVC lifts CLIP's training-free pseudo labels", "svc", "clip"),
    Claim("TSE adds to SVC", "svc_tse", "svc"),
    Claim("LVC's dynamic CAMs beat the static CAMs of the same checkpoint", "trained_lvc", "trained_static"),
    Claim("CRF adds to the decoder", "decoder_crf", "decoder"),
    Claim("the decoder + CRF beats the training-free pseudo labels it learned from", "decoder_crf", "svc_tse"),
    Claim("the decoder alone is not below them (floor −2 points)", "decoder", "svc_tse", floor=-0.02),
)


def check_claims(values: Mapping[str, float | Sequence[float]]) -> dict[str, dict]:
    """``values[row]`` = one value per seed (a list: seed-dependent rows) or a single number
    (seed-independent rows) → ``{claim text: {"values", "n", "mean", "std", "min", "max", "same_sign",
    "floor", "holds"}}`` (fractions; ``same_sign``: seeds whose difference has the mean's sign). With one
    seed a seed-dependent claim cannot be judged: its ``holds`` is None."""
    results = {}
    for claim in CLAIMS:
        better, than = values[claim.better], values[claim.than]
        seeds = [len(v) for v in (better, than) if not isinstance(v, (int, float))]
        if len(set(seeds)) > 1:
            raise ValueError(f"{claim.better} has {seeds[0]} values where {claim.than} has {seeds[1]}")
        n = seeds[0] if seeds else 1
        diff = paired_difference(_per_seed(better, n), _per_seed(than, n)).as_dict()
        std = diff["std"] if seeds else 0.0
        holds = None if std is None else diff["mean"] - SIGMAS * std > claim.floor
        results[claim.text] = {**diff, "std": std, "floor": claim.floor, "holds": holds}
    return results


def _per_seed(value: float | Sequence[float], n: int) -> list[float]:
    return [float(value)] * n if isinstance(value, (int, float)) else list(value)


def claims_table(results: Mapping[str, dict]) -> str:
    """The claims as a Markdown table: difference in points (mean ± sd (n)) and whether it holds."""
    lines = [f"| claim | difference (points) | holds (mean − {SIGMAS:g} sd above the floor) |", "| --- | --- | --- |"]
    for text, r in results.items():
        if r["std"] == 0.0 and r["n"] == 1:          # two seed-independent rows
            diff = f"{100 * r['mean']:+.1f} (seed-independent)"
        elif r["std"] is None:
            diff = f"{100 * r['mean']:+.1f} (one seed)"
        else:
            diff = f"{100 * r['mean']:+.1f} ± {100 * r['std']:.1f} (n = {r['n']})"
        verdict = {True: "yes", False: "**no**", None: "needs ≥ 2 seeds"}[r["holds"]]
        lines.append(f"| {text} | {diff} | {verdict} |")
    return "\n".join(lines)
