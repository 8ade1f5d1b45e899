"""tools/build_knowledge_base.py, and a custom dataset from class file to pseudo labels."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures_clip import tiny_overrides

from excel.builders import build_model
from excel.classes import VOC_CATEGORIES
from excel.config import load_config
from excel.evaluation.infer_lam import run_pseudo_labels
from excel.modeling.text_enrichment import KnowledgeBankError

ROOT = Path(__file__).resolve().parents[1]


def test_bank_tool_writes_a_bank_the_model_loads(tiny_clip_files, tmp_path):
    bank = tmp_path / "voc_bank.pt"
    overrides = tiny_overrides(tiny_clip_files, tmp_path / "cache")
    result = subprocess.run([sys.executable, "tools/build_knowledge_base.py", "--out", str(bank), *overrides],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "8 attribute centres" in result.stdout
    saved = torch.load(bank, weights_only=True)
    assert saved["centers"].shape == (8, 32) and saved["classes"] == list(VOC_CATEGORIES)
    cfg = load_config(ROOT / "configs/voc.yaml", [*overrides, f"tse.bank={bank}"])
    with_bank = build_model(cfg).text
    cfg.tse.enabled = False
    assert not torch.allclose(with_bank[:20], build_model(cfg).text[:20])
    cfg = load_config(ROOT / "configs/voc.yaml", [*overrides, f"tse.bank={bank}", "tse.num_clusters=16"])
    with pytest.raises(KnowledgeBankError, match="has 8 attribute centres but tse.num_clusters=16"):
        build_model(cfg)


def test_bank_tool_reports_a_class_without_descriptions(tiny_clip_files, tmp_path):
    descriptions = tmp_path / "d.json"
    descriptions.write_text('{"aeroplane": ["a clean origami aeroplane. it has wings."]}')
    result = subprocess.run([sys.executable, "tools/build_knowledge_base.py", "--out", str(tmp_path / "b.pt"),
                             *tiny_overrides(tiny_clip_files, tmp_path / "cache", **{"tse.descriptions": descriptions})],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "d.json" in result.stderr and "bicycle" in result.stderr


def test_custom_dataset_from_class_file(tiny_voc, tiny_clip_files, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(VOC_CATEGORIES) + "\n")
    cfg = load_config(ROOT / "configs/custom_example.yaml", tiny_overrides(tiny_clip_files, tmp_path / "cache", **{
        "dataset.root": tiny_voc, "dataset.class_file": classes, "dataset.split": "val",
        "tse.descriptions": ROOT / "prompts/voc_descriptions.json", "tse.num_clusters": 8}))
    scores = run_pseudo_labels(cfg, out_dir=tmp_path / "out")
    assert len(scores["iou"]) == 21
    assert len(list((tmp_path / "out" / "pseudo_labels").iterdir())) == 4
