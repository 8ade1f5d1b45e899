"""The project as a user installs it: ``pip install .`` (not editable) into a fresh environment, used from a
folder outside the checkout: the console scripts, the packaged configs, prompts and tiny CLIP, and the
README's API example."""
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What the copy of the checkout that pip builds from leaves out (top-level names; caches anywhere).
LEFT_OUT = {".git", ".venv", "build", "data", "work_dirs", "tests", ".pytest_cache"}
SCRIPTS = ("excel-train", "excel-infer-lam", "excel-infer-seg", "excel-predict", "excel-demo", "excel-ablate", "excel-gallery",
           "excel-benchmark", "excel-gpu-check", "excel-convert-checkpoint", "excel-generate-descriptions",
           "excel-pretrain-tiny-clip")


def left_out(folder: str, names: list[str]) -> list[str]:
    top = Path(folder) == ROOT
    return [n for n in names if (top and n in LEFT_OUT) or n == "__pycache__" or n.endswith(".egg-info")]


def readme_api_example() -> str:
    """The README's Python example that starts with ``from excel import``."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)
    return next(block for block in blocks if block.startswith("from excel import"))


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    """(environment, an empty folder outside the checkout to work in, the environment variables to use)."""
    base = tmp_path_factory.mktemp("install")
    source, env_dir, work = base / "source", base / "env", base / "user"
    shutil.copytree(ROOT, source, symlinks=True, ignore=left_out)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # The dependencies (torch, open_clip, ...) and pip come from this test's environment, behind the new one's
    # own site-packages; its .pth files (the editable install of the checkout among them) are not run.
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                             "--disable-pip-version-check", "--quiet", str(source)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    shutil.rmtree(source)                   # nothing may be read from the copy any more
    work.mkdir()
    return env_dir, work, env


def test_installed_package_is_a_copy_with_its_files(installed):
    env_dir, work, env = installed
    probe = ("import excel, excel.resources as r; print(excel.__file__); "
             "print(r.packaged('configs/voc.yaml').is_file(), r.packaged('assets/tiny_clip_synthetic.pt').is_file(), "
             "r.packaged('prompts/describe_class.txt').is_file())")
    result = subprocess.run([env_dir / "bin" / "python", "-c", probe], cwd=work, env=env, capture_output=True,
                            text=True, check=True)
    location, found = result.stdout.split("\n")[:2]
    assert Path(location).is_relative_to(env_dir) and not Path(location).is_symlink()
    assert found == "True True True"
    for script in SCRIPTS:
        assert (env_dir / "bin" / script).is_file(), script


def test_demo_and_the_readme_example_run_from_another_folder(installed, demo_run):
    env_dir, work, env = installed
    demo = subprocess.run([env_dir / "bin" / "excel-demo", "--quick", "--threads", "1"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=600)
    assert demo.returncode == 0, demo.stderr[-3000:]
    summary = json.loads((work / "work_dirs" / "demo_quick" / "demo_summary.json").read_text())
    in_checkout = json.loads((demo_run.work / "demo_summary.json").read_text())
    summary.pop("minutes"), in_checkout.pop("minutes")
    assert summary == in_checkout          # the installed package computes exactly what the checkout does

    example = subprocess.run([env_dir / "bin" / "python", "-c", readme_api_example()], cwd=work, env=env,
                             capture_output=True, text=True, timeout=300)
    assert example.returncode == 0, example.stderr[-3000:]
    present = ast.literal_eval(example.stdout.strip().splitlines()[-1])     # the classes the model found
    assert present and set(present) <= {"background", "disc", "square", "triangle", "star", "ring"}

    refused = subprocess.run([env_dir / "bin" / "excel-infer-seg", "--checkpoint", "missing.pth"], cwd=work,
                             env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and refused.stderr.startswith("error: ") and refused.stderr.count("\n") == 1
