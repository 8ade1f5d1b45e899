"""The command-line layer: user errors and file-system refusals end as one `error:` line with exit code 1;
programming errors keep their traceback."""
import errno
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures_clip import tiny_overrides

from excel.cli import config_parser, run_with_config
from excel.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
FULL_DISK = Path("/dev/full")          # every write fails with ENOSPC


def run_job(job, argv, capsys):
    """Exit code and stderr lines of run_with_config(job) on configs/voc.yaml."""
    parser = config_parser("test", ROOT / "configs" / "voc.yaml")
    parser.add_argument("--out")
    with pytest.raises(SystemExit) as info:
        run_with_config(parser, job, argv)
    return info.value.code, capsys.readouterr().err.strip().splitlines()


def raise_(error):
    def job(cfg, args):
        raise error
    return job


def test_bad_config_value_is_one_line(capsys):
    code, lines = run_job(raise_(AssertionError("never runs")), ["train.eval_interval=0"], capsys)
    assert code == 1
    assert lines == ["error: train.eval_interval=0 is not valid: use an integer >= 1 (default: 2000)"]


def test_permission_error_names_the_path(capsys):
    error = PermissionError(errno.EACCES, "Permission denied", "/data/runs/exp1")
    code, lines = run_job(raise_(error), [], capsys)
    assert code == 1
    assert lines == [("error: /data/runs/exp1: Permission denied; check the permissions of that path or choose "
                      "another output folder (work_dir=... or --out)")]


def test_read_only_file_system(capsys):
    code, lines = run_job(raise_(OSError(errno.EROFS, "Read-only file system", "/mnt/ro/x.png")), [], capsys)
    assert code == 1 and lines[0].startswith("error: /mnt/ro/x.png: Read-only file system; the file system is read-only")


@pytest.mark.skipif(not FULL_DISK.exists(), reason="needs /dev/full")
def test_full_disk_on_a_plain_write_names_the_output_folder(capsys, tmp_path):
    def job(cfg, args):
        with open(FULL_DISK, "w") as handle:
            handle.write("x" * 100_000)
    code, lines = run_job(job, ["--out", str(tmp_path / "out")], capsys)
    assert code == 1 and len(lines) == 1
    assert lines[0].startswith(f"error: a file under {tmp_path / 'out'}: No space left on device (")
    assert "MiB free); free disk space there or choose another output folder" in lines[0]


@pytest.mark.skipif(not FULL_DISK.exists(), reason="needs /dev/full")
def test_full_disk_under_torch_save_is_one_line(capsys, tmp_path):
    def job(cfg, args):
        torch.save({"weights": torch.zeros(100_000)}, FULL_DISK)
    code, lines = run_job(job, [f"work_dir={tmp_path}"], capsys)
    assert code == 1 and len(lines) == 1
    assert lines[0].startswith(f"error: writing a file under {tmp_path} failed (torch: ...")
    assert "the disk is probably full" in lines[0]


def test_multi_line_user_error_is_printed_on_one_line(capsys):
    error = ConfigError("tse.bank: cannot read bank.pt (Weights only load failed.\nUnsupported operand 103\n)")
    code, lines = run_job(raise_(error), [], capsys)
    assert code == 1
    assert lines == ["error: tse.bank: cannot read bank.pt (Weights only load failed. Unsupported operand 103 )"]


def test_ctrl_c_is_one_line(capsys):
    code, lines = run_job(raise_(KeyboardInterrupt()), [], capsys)
    assert code == 130 and lines == ["error: interrupted (Ctrl-C)"]


@pytest.mark.parametrize("error", [RuntimeError("shape mismatch in a matmul"), KeyError("head"),
                                   OSError(errno.EIO, "Input/output error")])
def test_programming_errors_keep_their_traceback(error):
    parser = config_parser("test", ROOT / "configs" / "voc.yaml")
    with pytest.raises(type(error)):
        run_with_config(parser, raise_(error), [])


def test_malformed_descriptions_json_is_one_line(tiny_clip_files, tmp_path):
    descriptions = tmp_path / "broken.json"
    descriptions.write_text('{"aeroplane": ["a clean origami aeroplane."')
    result = subprocess.run([sys.executable, "tools/build_knowledge_base.py", "--out", str(tmp_path / "b.pt"),
                             *tiny_overrides(tiny_clip_files, tmp_path / "cache", **{"tse.descriptions": descriptions})],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: description file {descriptions} is not valid JSON (")
    assert "Traceback" not in result.stderr
    descriptions.write_bytes(b"\xff\xfe\x00binary")
    result = subprocess.run([sys.executable, "tools/build_knowledge_base.py", "--out", str(tmp_path / "b.pt"),
                             *tiny_overrides(tiny_clip_files, tmp_path / "cache", **{"tse.descriptions": descriptions})],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"description file {descriptions} is not UTF-8 text" in result.stderr


@pytest.mark.parametrize("tool", ["scripts/train_voc.py", "tools/infer_lam.py"])
def test_missing_dataset_root_is_one_line(tiny_clip_files, tmp_path, tool):
    overrides = tiny_overrides(tiny_clip_files, tmp_path / "cache", **{"tse.enabled": "false", "dataset.root": "null",
                                                                        "work_dir": tmp_path / "run"})
    result = subprocess.run([sys.executable, tool, *overrides], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: dataset.root is not set; point it at the dataset")
