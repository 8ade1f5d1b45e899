"""The sweep's tables: ablation.json (every value), ablation.md (for reading) and ablation.csv (for
plotting). mIoU values are fractions in the JSON and CSV, percentages in the Markdown."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

from excel.io import write_json, write_text

REPORT_FILES = ("ablation.json", "ablation.md", "ablation.csv")


def _pct(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def _mean_std(entry: dict, signed: bool = False) -> str:
    if entry["n"] == 0:
        return "–"
    std = f" ± {100 * entry['std']:.1f}" if entry["std"] is not None else ""
    return f"{_pct(entry['mean'], signed)}{std}"


def markdown(summary: dict, metrics: Sequence[str], baseline: str, seeds: Sequence[int]) -> str:
    """One table per metric: variant | mean ± std (n) | min–max | paired Δ to the baseline | same sign."""
    lines = [f"# Ablation ({len(seeds)} seeds: {', '.join(map(str, seeds))}; mIoU %, sample std)", ""]
    for metric in metrics:
        lines += [f"## {metric}", "", f"| variant | mean ± std | n | min–max | Δ to {baseline} (paired) | same sign |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for name, variant in summary["variants"].items():
            entry = variant["metrics"][metric]
            span = f"{_pct(entry['min'])}–{_pct(entry['max'])}" if entry["n"] else "–"
            if name == baseline:
                delta, sign = "(baseline)", ""
            else:
                diff = summary["differences"][name][metric]
                delta, sign = _mean_std(diff, signed=True), f"{diff['same_sign']}/{diff['n']}"
            lines.append(f"| {name} | {_mean_std(entry)} | {entry['n']} | {span} | {delta} | {sign} |")
        lines.append("")
    return "\n".join(lines)


def csv_text(summary: dict, metrics: Sequence[str], baseline: str) -> str:
    """One row per variant and metric, with the spread and the paired difference to the baseline."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["variant", "metric", "n", "mean", "std", "min", "max", "diff_mean", "diff_std", "diff_n",
                     "diff_same_sign"])
    for name, variant in summary["variants"].items():
        for metric in metrics:
            e = variant["metrics"][metric]
            d = summary["differences"].get(name, {}).get(metric) if name != baseline else None
            diff = [d["mean"], d["std"], d["n"], d["same_sign"]] if d else [None] * 4
            writer.writerow([name, metric, e["n"], e["mean"], e["std"], e["min"], e["max"], *diff])
    return out.getvalue()


def write_report(folder: Path, summary: dict, metrics: Sequence[str], baseline: str, seeds: Sequence[int]) -> str:
    """Write ablation.json / .md / .csv into ``folder``; returns the Markdown."""
    text = markdown(summary, metrics, baseline, seeds)
    json_file, md_file, csv_file = (folder / name for name in REPORT_FILES)
    write_json(json_file, {"seeds": list(seeds), "baseline": baseline, "metrics": list(metrics), **summary})
    write_text(md_file, text)
    write_text(csv_file, csv_text(summary, metrics, baseline))
    return text
