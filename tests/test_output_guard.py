"""No tool writes where it does not belong (the shared guard of excel/io.py), and no wrong input passes silently.

Each tool is run as a user runs it (its ``main``), and every refusal must be one ``error:`` line that leaves
every file as it was.
"""
import importlib.util
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fixtures_clip import tiny_overrides
from PIL import Image
from torch import nn

from excel.config import ConfigError, load_config
from excel.engine.step import TrainingError
from excel.engine.trainer import Trainer
from excel.engine.work_dir import check_work_dir
from excel.evaluation import infer_lam
from excel.evaluation.infer_lam import run_pseudo_labels
from excel.evaluation.reuse import RECORD_FILE
from excel.io import (
    DatasetError,
    check_output_file,
    check_output_folder,
    read_image,
    read_mask,
    read_split,
    write_mask,
)
from excel.modeling import text_enrichment as tse
from excel.modeling.checkpoint import CheckpointError, head_checkpoint, load_head_weights, save_checkpoint
from excel.modeling.clip_loader import clip_tokenizer
from excel.prep.coco_masks import write_coco_masks
from excel.prep.splits import make_voc_splits
from excel.prep.synthetic_dataset import STAMP_FILE, read_scene_stamp, scene_stamp, write_synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]


def tool(name: str):
    """The module of tools/<name>.py."""
    spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def snapshot(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(capsys, exit_info, message: str) -> str:
    """The tool exited 1 with exactly one ``error:`` line containing ``message`` (besides progress bars)."""
    err = "\n".join(line for line in capsys.readouterr().err.splitlines() if "%|" not in line).strip()
    assert exit_info.value.code == 1, err
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert message in err, err
    return err


@pytest.fixture
def voc(tiny_voc, tmp_path) -> Path:
    """A private copy of the tiny VOC dataset (tests may try to damage it)."""
    return Path(shutil.copytree(tiny_voc, tmp_path / "VOC"))


# -- the guard itself ------------------------------------------------------------------------------

def test_guard_refuses_files_dataset_folders_and_links_leading_out(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match="is a file, not a folder"):
        check_output_folder(tmp_path / "file")
    for name in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "Annotations"):
        with pytest.raises(DatasetError, match=f"a dataset's {name} folder; never write into a dataset"):
            check_output_folder(tmp_path / "anywhere" / name / "out")
        with pytest.raises(DatasetError, match=f"a dataset's {name} folder"):
            check_output_file(tmp_path / "anywhere" / name / "x.png")
    assert check_output_folder(tmp_path / "data" / "SegmentationClass" / "train2014",
                               allow=("SegmentationClass",)) == tmp_path / "data" / "SegmentationClass" / "train2014"
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "labels").symlink_to(elsewhere)
    with pytest.raises(DatasetError, match=rf"{out / 'labels'} is a symbolic link to {elsewhere}, outside"):
        check_output_folder(out, inside=("labels",))
    (out / "inner").mkdir()
    (out / "kept").symlink_to(out / "inner")                         # a link that stays inside is fine
    check_output_folder(out, inside=("kept", "missing"))


# -- outputs only where they belong, in every tool ---------------------------------------------------

def test_convert_checkpoint_never_overwrites_a_dataset_file_its_input_or_a_training_checkpoint(voc, tmp_path, capsys):
    convert = tool("convert_checkpoint")
    head = {"adapter.mlps.0.0.weight": torch.ones(2, 3), "decoder.classifier.weight": torch.ones(21, 2)}
    training = tmp_path / "run" / "latest.pth"
    save_checkpoint(training, {"head": head, "optimizer": {}, "scheduler": {}, "iteration": 2, "rng": {},
                               "num_classes": 20})
    image = voc / "JPEGImages" / "2007_000032.jpg"
    before = {**snapshot(voc), **snapshot(training.parent)}
    cases = [([str(training), str(image), "--config", str(ROOT / "configs/voc.yaml"), f"dataset.root={voc}"],
              "never write into a dataset"),
             ([str(training), str(training)], "is IN itself"),
             ([str(tmp_path / "other.pth"), str(training)], "is a resumable training checkpoint")]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            convert.main(argv)
        one_error_line(capsys, exit_info, message)
    assert {**snapshot(voc), **snapshot(training.parent)} == before


def test_build_knowledge_base_refuses_an_out_inside_the_dataset(voc, tmp_path, capsys):
    before = snapshot(voc)
    with pytest.raises(SystemExit) as exit_info:
        tool("build_knowledge_base").main(["--out", str(voc / "SegmentationClassAug" / "2008_000002.png"),
                                           f"dataset.root={voc}", f"tse.cache_dir={tmp_path / 'cache'}"])
    one_error_line(capsys, exit_info, "never write into a dataset")
    assert snapshot(voc) == before


def test_predict_refuses_an_out_in_a_dataset_a_file_and_links_leading_out(voc, tmp_path, capsys):
    predict = tool("predict")
    image = voc / "JPEGImages" / "2007_000032.jpg"
    afile = tmp_path / "afile"
    afile.write_text("x")
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "labels").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    before = snapshot(tmp_path)
    for out, message in ((voc / "JPEGImages", "a dataset's JPEGImages folder"), (afile, "is a file, not a folder"),
                         (linked, "is a symbolic link")):
        with pytest.raises(SystemExit) as exit_info:
            predict.main([str(image), "--checkpoint", str(tmp_path / "missing.pth"), "--out", str(out)])
        one_error_line(capsys, exit_info, message)
    assert snapshot(tmp_path) == before


def test_gallery_refuses_an_out_in_a_dataset_and_a_huge_thumbnail(voc, tmp_path, capsys):
    gallery = tool("gallery")
    with pytest.raises(SystemExit) as exit_info:
        gallery.main([str(tmp_path), "--out", str(voc / "JPEGImages")])
    one_error_line(capsys, exit_info, "never write into a dataset")
    with pytest.raises(SystemExit) as exit_info:
        gallery.main([str(tmp_path), "--thumb", "100000"])
    assert exit_info.value.code == 2 and "--thumb between 16 and 1024" in capsys.readouterr().err


def test_make_splits_and_make_coco_masks_refuse_outputs_in_image_folders(voc, tmp_path, capsys):
    before = snapshot(voc)
    with pytest.raises(SystemExit) as exit_info:
        tool("make_splits").main(["--dataset", "voc", "--root", str(voc), "--out", str(voc / "JPEGImages"),
                                  "--workers", "1"])
    one_error_line(capsys, exit_info, "lies inside the dataset folder")
    annotations = tmp_path / "instances.json"
    annotations.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(SystemExit) as exit_info:
        tool("make_coco_masks").main(["--annotations", str(annotations), "--out", str(voc / "JPEGImages" / "x")])
    one_error_line(capsys, exit_info, "a dataset's JPEGImages folder")
    assert snapshot(voc) == before
    assert write_coco_masks(annotations, tmp_path / "COCO" / "SegmentationClass" / "val2014") == 0   # its own folder


def test_make_synthetic_refuses_a_folder_it_did_not_draw(voc, tmp_path, capsys):
    before = snapshot(voc)
    with pytest.raises(SystemExit) as exit_info:
        tool("make_synthetic").main(["--root", str(voc), "--num-train", "1", "--num-val", "1"])
    one_error_line(capsys, exit_info, "was not drawn by this generator")
    assert snapshot(voc) == before
    drawn = tmp_path / "drawn"
    write_synthetic_dataset(drawn, 1, 1, min_size=32, max_size=32)
    write_synthetic_dataset(drawn, 2, 1, min_size=32, max_size=32)      # its own drawing may be redrawn
    assert read_scene_stamp(drawn) == scene_stamp(2, 1, min_size=32, max_size=32)


def test_unfinished_drawing_is_not_taken_for_a_finished_one(tmp_path, monkeypatch):
    from excel.prep import synthetic_dataset

    monkeypatch.setattr(synthetic_dataset, "write_labels", lambda *args: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        write_synthetic_dataset(tmp_path / "s", 1, 1, min_size=32, max_size=32)
    stamp = json.loads((tmp_path / "s" / STAMP_FILE).read_text())
    assert stamp["unfinished"] is True and read_scene_stamp(tmp_path / "s") != scene_stamp(1, 1, min_size=32,
                                                                                            max_size=32)


def test_linked_sub_folders_of_an_output_folder_or_work_dir_are_not_written_through(voc, tiny_clip_files, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "pseudo_labels").symlink_to(elsewhere)
    cfg = load_config(ROOT / "configs/voc.yaml", tiny_overrides(
        tiny_clip_files, tmp_path / "cache", **{"dataset.root": voc, "dataset.split": "val", "tse.enabled": False,
                                                "work_dir": tmp_path / "work"}))
    with pytest.raises(DatasetError, match="pseudo_labels is a symbolic link"):
        run_pseudo_labels(cfg, out_dir=out)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "checkpoints").symlink_to(elsewhere)
    with pytest.raises(DatasetError, match="checkpoints is a symbolic link"):
        check_work_dir(cfg, None, None)
    assert not any(elsewhere.iterdir()) and sorted(p.name for p in out.iterdir()) == ["pseudo_labels"]


# -- no silently wrong results ------------------------------------------------------------------------

class _Model(nn.Module):
    num_classes = 20

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(3, 2)


def test_non_finite_head_weights_are_refused_naming_the_file(tmp_path):
    state = {"head": {"weight": torch.ones(2, 3), "bias": torch.tensor([0.0, float("nan")])}}
    path = tmp_path / "nan.pth"
    save_checkpoint(path, state)
    with pytest.raises(CheckpointError, match=rf"checkpoint {path} holds non-finite .* bias"):
        load_head_weights(_Model(), path)
    published = {"decoder.classifier.weight": torch.full((21, 2), float("inf"))}
    with pytest.raises(CheckpointError, match="in.pth holds non-finite"):
        head_checkpoint(published, "in.pth")
    state["head"]["bias"] = torch.zeros(2)
    load_head_weights(_Model(), state)                                  # finite weights load


def test_non_finite_bank_is_refused_and_a_damaged_cache_is_rebuilt(tiny_clip, tmp_path):
    bank = tmp_path / "bank.pt"
    tse.save_bank({"centers": torch.tensor([[0.0, float("nan")]])}, bank)
    with pytest.raises(tse.KnowledgeBankError, match=f"{bank} holds non-finite"):
        tse.read_bank(bank)
    descriptions = tmp_path / "d.json"
    descriptions.write_text(json.dumps({name: [f"a {name} {i}" for i in range(4)] for name in ("cat", "dog")}))
    cache = tmp_path / "cache" / "bank.pt"

    def build():
        return tse.load_or_build_bank(tiny_clip, clip_tokenizer("tiny-clip-test"), bank_path=None, cache_path=cache,
                                      descriptions_path=str(descriptions), class_keys=["cat", "dog"], num_clusters=3)

    first = build()
    cache.write_bytes(b"damaged")
    rebuilt = build()
    assert torch.equal(rebuilt["centers"], first["centers"]) and tse.read_bank(cache)["num_clusters"] == 3


def test_skip_existing_reuses_only_outputs_made_with_the_same_settings(voc, tiny_clip_files, tmp_path,
                                                                         monkeypatch):
    def cfg(**values):
        return load_config(ROOT / "configs/voc.yaml", tiny_overrides(
            tiny_clip_files, tmp_path / "cache", **{"dataset.root": voc, "dataset.split": "val", "tse.enabled": False,
                                                    **values}))

    out = tmp_path / "out"
    run_pseudo_labels(cfg(**{"cam.box_threshold": 0.4}), out_dir=out)
    before = snapshot(out)
    with pytest.raises(DatasetError, match=r"other settings \(cam.box_threshold 0.4 → 0.5\)"):
        run_pseudo_labels(cfg(**{"cam.box_threshold": 0.5, "infer.skip_existing": True}), out_dir=out)
    assert snapshot(out) == before                                   # config.yaml still tells the truth
    run_pseudo_labels(cfg(**{"cam.box_threshold": 0.4, "infer.skip_existing": True, "device": "cpu"}), out_dir=out)
    real, calls = infer_lam.predict_image, []

    def interrupted(*args, **kwargs):                                # a redo with other settings, cut short
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(infer_lam, "predict_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_pseudo_labels(cfg(**{"cam.box_threshold": 0.5}), out_dir=out)
    monkeypatch.setattr(infer_lam, "predict_image", real)
    with pytest.raises(DatasetError, match="without a record of the settings"):
        run_pseudo_labels(cfg(**{"cam.box_threshold": 0.5, "infer.skip_existing": True}), out_dir=out)
    run_pseudo_labels(cfg(**{"cam.box_threshold": 0.5}), out_dir=out)
    assert json.loads((out / RECORD_FILE).read_text())["cam.box_threshold"] == 0.5


def test_duplicate_ids_and_ids_with_spaces_name_the_line(tmp_path):
    split = tmp_path / "val.txt"
    split.write_text("a\nb\n\na\n")
    with pytest.raises(DatasetError, match=rf"{split}, line 4: image id 'a' is listed again \(first on line 1\)"):
        read_split(split)
    split.write_text("a\nmy photo\n")
    with pytest.raises(DatasetError, match=rf"{split}, line 2: 'my photo' holds whitespace"):
        read_split(split)
    split.write_text("a -1\nb 1\n")                                  # VOC's flag columns stay legal
    assert read_split(split) == ["a", "b"]


def test_sixteen_bit_images_are_scaled_and_sixteen_bit_masks_kept_or_refused(tmp_path):
    values = np.array([[0, 257, 1000], [30000, 65535, 128]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "wide.png")
    assert Image.open(tmp_path / "wide.png").mode.startswith("I")
    expected = np.round(values / 257).astype(np.uint8)
    np.testing.assert_array_equal(read_image(tmp_path / "wide.png"), np.repeat(expected[..., None], 3, axis=2))
    Image.fromarray(np.array([[0, 3], [255, 20]], dtype=np.uint16)).save(tmp_path / "mask.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "mask.png"), [[0, 3], [255, 20]])
    with pytest.raises(DatasetError, match="class indices must lie in 0..255"):
        read_mask(tmp_path / "wide.png")


def test_resume_of_a_finished_run_says_nothing_is_left_to_train(voc, tiny_clip_files, tmp_path):
    cfg = load_config(ROOT / "configs/voc.yaml", tiny_overrides(
        tiny_clip_files, tmp_path / "cache", **{"dataset.root": voc, "work_dir": tmp_path / "w",
                                                "train.max_iters": 4}))
    with pytest.raises(ConfigError, match="at iteration 6 and train.max_iters=4: nothing is left to train"):
        check_work_dir(cfg, "ckpt.pth", {"iteration": 6, "config": None})
    check_work_dir(cfg, "ckpt.pth", {"iteration": 3, "config": None})


def test_non_finite_weights_are_never_saved_and_the_last_good_checkpoint_is_named(tmp_path):
    trainer = Trainer.__new__(Trainer)
    trainer.model = SimpleNamespace(head=nn.Linear(2, 2))
    trainer.work_dir = tmp_path
    trainer.last_checkpoint = tmp_path / "checkpoints" / "iter_000002.pth"
    with torch.no_grad():
        trainer.model.head.weight[0, 0] = float("nan")
    with pytest.raises(TrainingError, match="non-finite .* by iteration 4; .* last good checkpoint is .*iter_000002"):
        trainer.save(4)
    assert not (tmp_path / "checkpoints").exists()


# -- one line, no traceback ---------------------------------------------------------------------------

def test_decompression_bombs_and_folders_are_one_clear_error(tmp_path, monkeypatch):
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)              # 4096 pixels: beyond twice the limit
    with pytest.raises(DatasetError, match="too large to decode safely"):
        read_image(tmp_path / "big.png")
    (tmp_path / "folder.jpg").mkdir()
    with pytest.raises(DatasetError, match="is a folder, not an image file"):
        read_image(tmp_path / "folder.jpg")


def test_predict_bomb_and_folder_inputs_are_one_line(tmp_path, capsys, monkeypatch):
    predict = tool("predict")
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    empty = tmp_path / "photo.jpg"
    empty.mkdir()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for inputs, message in (([tmp_path / "big.png"], "too large to decode safely"), ([empty], "holds no image file")):
        with pytest.raises(SystemExit) as exit_info:
            predict.main([*map(str, inputs), "--checkpoint", str(tmp_path / "x.pth"), "--out", str(tmp_path / "o")])
        one_error_line(capsys, exit_info, message)
    assert not (tmp_path / "o").exists()


def test_predict_bounds_the_size_it_segments(demo_run, tmp_path, capsys):
    from excel.apps import predict

    big = tmp_path / "big.png"
    image = read_image(sorted((demo_run.root / "JPEGImages").glob("val_*.jpg"))[0])
    Image.fromarray(np.ascontiguousarray(np.tile(image, (2, 3, 1)))).save(big)
    predict.main([str(big), "--checkpoint", str(demo_run.checkpoint), "--out", str(tmp_path / "o"), "--max-side", "96",
                  "infer.scales=[1.0]", "infer.flip=false", "crf.enabled=false", "device=cpu"])
    height, width = 2 * image.shape[0], 3 * image.shape[1]
    assert f"segmented resized from {width}×{height}" in capsys.readouterr().out
    labels = read_mask(tmp_path / "o" / "labels" / "big.png")
    assert labels.shape == (height, width)
    small = predict.bounded(read_image(big), 96)
    assert max(small.shape[:2]) == 96
    np.testing.assert_array_equal(predict.resize_nearest(np.arange(6).reshape(2, 3), (4, 6)),
                                  np.repeat(np.repeat(np.arange(6).reshape(2, 3), 2, axis=0), 2, axis=1))


def test_make_splits_out_of_range_mask_is_one_line_first(voc, capsys):
    mask = read_mask(voc / "SegmentationClassAug" / "2008_000002.png").copy()
    mask[0, 0] = 77
    write_mask(voc / "SegmentationClassAug" / "2008_000002.png", mask)
    with pytest.raises(SystemExit) as exit_info:
        tool("make_splits").main(["--dataset", "voc", "--root", str(voc), "--workers", "2"])
    one_error_line(capsys, exit_info, "contains values [77] outside the class range 0..20")
    with pytest.raises(DatasetError):
        make_voc_splits(voc, voc / "splits2", workers=1)
    assert not (voc / "splits2").exists()


@pytest.mark.parametrize("content, message", [("{broken", "cannot parse COCO annotation file"),
                                              (json.dumps({"images": [], "annotations": []}), "has no categories")])
def test_make_coco_masks_bad_annotation_file_is_one_line(tmp_path, capsys, content, message):
    annotations = tmp_path / "instances.json"
    annotations.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        tool("make_coco_masks").main(["--annotations", str(annotations), "--out", str(tmp_path / "masks")])
    one_error_line(capsys, exit_info, message)
    assert not (tmp_path / "masks").exists()
