"""excel/io.py: split-list ids that cannot name files outside an output folder, confined output paths,
refusal of output folders inside a dataset, and file modes of atomic writes."""
import os
import stat
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from excel.config import save_config
from excel.io import (
    DatasetError,
    atomic_write,
    check_output_folder,
    check_split_name,
    image_id_problem,
    output_path,
    read_split,
    write_text,
)
from excel.metrics import save_scores, scores
from excel.modeling.checkpoint import save_checkpoint
from excel.modeling.text_enrichment import save_bank

HOSTILE_IDS = [
    "../escape",
    "a/../../escape",
    "..",
    ".",
    "./a",
    "/etc/passwd",
    "//server/share",
    "a//b",
    "a/",
    "a\\..\\..\\b",
    "..\\escape",
    "a\x00b",
    "a\x07b",
]
LEGAL_IDS = ["2007_000032", "train2014/COCO_train2014_000000000009", "a.b..c", "..a", "a..", "x/y/z"]


@pytest.mark.parametrize("image_id", HOSTILE_IDS)
def test_split_list_rejects_ids_that_are_not_plain_relative_names(tmp_path, image_id):
    split = tmp_path / "val.txt"
    split.write_text(f"2007_000032\n\n{image_id}\n2007_000033\n")
    with pytest.raises(DatasetError, match=rf"{split}, line 3: image id"):
        read_split(split)


def test_split_list_keeps_legal_ids_and_extra_columns(tmp_path):
    split = tmp_path / "train.txt"
    split.write_text("".join(f"{i} 1\n" for i in LEGAL_IDS) + "\r\n")
    assert read_split(split) == LEGAL_IDS
    assert all(image_id_problem(i) is None for i in LEGAL_IDS)


def test_split_list_that_is_not_utf8_is_a_clear_error(tmp_path):
    split = tmp_path / "val.txt"
    split.write_bytes(b"2007_000032\n\xff\xfe\n")
    with pytest.raises(DatasetError, match="not UTF-8"):
        read_split(split)


@pytest.mark.parametrize("image_id", HOSTILE_IDS + ["", str("/tmp/x")])
def test_output_path_refuses_every_hostile_id(tmp_path, image_id):
    with pytest.raises(DatasetError, match="outside the output folder"):
        output_path(tmp_path / "out" / "raw", image_id, ".png")


def test_output_path_keeps_sub_folders_and_refuses_links_leading_out(tmp_path):
    folder = tmp_path / "out" / "raw"
    assert output_path(folder, "train2014/COCO_1", ".png") == folder / "train2014" / "COCO_1.png"
    folder.mkdir(parents=True)
    (folder / "link").symlink_to(tmp_path)
    with pytest.raises(DatasetError, match="outside the output folder"):
        output_path(folder, "link/x", ".png")


def test_output_folder_inside_a_dataset_folder_is_refused(tmp_path):
    images = tmp_path / "VOC" / "JPEGImages"
    for output in (images, images / "sub", images / ".." / "JPEGImages" / "x"):
        with pytest.raises(DatasetError, match=f"output folder {output} lies inside the dataset folder {images}"):
            check_output_folder(output, [images])
    check_output_folder(tmp_path / "VOC" / "out", [images])
    check_output_folder(tmp_path / "VOC" / "JPEGImagesX", [images])


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_follows_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        write_text(tmp_path / "new.txt", "x")
        atomic_write(tmp_path / "bytes.bin", lambda tmp: tmp.write_bytes(b"y"))
    finally:
        os.umask(previous)
    for name in ("new.txt", "bytes.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bytes.bin", "new.txt"]


def test_every_writer_is_atomic_and_follows_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "ckpt.pth", {"iteration": 1})
        save_bank({"centers": torch.zeros(2, 3)}, tmp_path / "bank.pt")
        save_config(OmegaConf.create({"a": 1}), tmp_path / "config.yaml")
        save_scores(scores(torch.eye(2, dtype=torch.long)), ["background", "a"], tmp_path / "scores")
        for writer, name in ((save_checkpoint, "ckpt.pth"), (lambda p, s: save_bank(s, p), "bank.pt")):
            with pytest.raises(Exception):
                writer(tmp_path / name, {"centers": lambda: None})      # cannot be pickled: the write fails
    finally:
        os.umask(previous)
    names = ["bank.pt", "ckpt.pth", "config.yaml", "scores.json", "scores.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == names       # no temporary file left behind
    assert all(stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644 for name in names)
    assert torch.load(tmp_path / "ckpt.pth") == {"iteration": 1}     # the failed write kept the old file
    assert torch.load(tmp_path / "bank.pt")["centers"].shape == (2, 3)


@pytest.mark.parametrize("split", ["../../x", "a/b", "..", "", "/abs", "a\\b"])
def test_split_names_that_are_not_plain_file_names_are_refused(split):
    with pytest.raises(DatasetError, match="must be a plain file name"):
        check_split_name(split)
    assert check_split_name("train_aug") == "train_aug"


def test_atomic_write_refuses_to_replace_what_is_not_a_regular_file(tmp_path):
    """Renaming over a device node, folder or pipe would replace it: refused, and the target is left alone."""
    folder = tmp_path / "out.png"
    folder.mkdir()
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for target in (folder, fifo, Path("/dev/null")):
        with pytest.raises(FileExistsError, match="not a regular file"):
            write_text(target, "x")
    assert folder.is_dir() and fifo.is_fifo() and Path("/dev/null").is_char_device()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png", "pipe"]
