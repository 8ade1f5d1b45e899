"""configs/, prompts/ and assets/ from any folder: the current folder's file first, else the package's copy."""
from pathlib import Path

from excel.config import load_config
from excel.resources import locate, packaged

ROOT = Path(__file__).resolve().parents[1]


def test_packaged_files_are_the_checkout_folders():
    for relative in ("configs/voc.yaml", "prompts/describe_class.txt", "assets/tiny_clip_synthetic.pt"):
        assert packaged(relative).read_bytes() == (ROOT / relative).read_bytes()


def test_locate_prefers_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert locate("configs/voc.yaml") == packaged("configs/voc.yaml")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "voc.yaml").write_text("work_dir: mine\n")
    assert locate("configs/voc.yaml") == Path("configs/voc.yaml")
    assert load_config("configs/voc.yaml").work_dir == "mine"
    for other in ("configs/none.yaml", "data/configs/voc.yaml", "openai", "/abs/configs/voc.yaml", "configs"):
        assert locate(other) == Path(other)


def test_config_paths_resolve_to_the_package_outside_the_checkout(tmp_path, monkeypatch):
    inside = load_config(ROOT / "configs" / "demo.yaml")
    monkeypatch.chdir(tmp_path)
    outside = load_config("configs/demo.yaml")
    for key in ("model_config", "pretrained"):
        assert Path(outside.clip[key]) == packaged(inside.clip[key])
    assert Path(outside.tse.descriptions) == packaged(inside.tse.descriptions)
    assert outside.dataset.root == inside.dataset.root == "data/synthetic"      # not a packaged file: as given
    monkeypatch.chdir(ROOT)
    assert load_config("configs/demo.yaml").clip.pretrained == "assets/tiny_clip_synthetic.pt"   # as today
