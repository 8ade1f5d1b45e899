"""Build the TSE knowledge-base bank: class descriptions + CLIP text encoder → k-means attribute centres.

    python tools/build_knowledge_base.py --config configs/voc.yaml [--out BANK.pt] [section.key=value ...]

The descriptions file (tse.descriptions), the number of clusters (tse.num_clusters) and the CLIP weights
(clip.model, clip.pretrained) come from the config. The bank is written to --out (default: tse.bank, or
the cache file a run would use). Classes whose descriptions fall into identical cluster sets are listed:
a sign that K is too small to tell them apart.
"""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from excel.cli import config_parser, run_with_config
from excel.prep.knowledge_base import build_knowledge_base


def main(argv=None) -> None:
    parser = config_parser("Build the TSE knowledge-base bank from class descriptions.", ROOT / "configs" / "voc.yaml")
    parser.add_argument("--out", help="bank file to write (default: tse.bank or the run's cache file)")
    run_with_config(parser, lambda cfg, args: build_knowledge_base(cfg, args.out), argv)


if __name__ == "__main__":
    main()
