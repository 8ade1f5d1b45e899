"""The shape the project keeps: small modules, no path that works only from a checkout, a short README, and
the generated option reference equal to what its generator prints."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 400
MAX_README_LINES = 300


def package_modules() -> list[Path]:
    return sorted(path for path in (ROOT / "excel").rglob("*.py") if "__pycache__" not in path.parts)


def test_no_module_is_over_the_size_limit():
    sizes = {str(path.relative_to(ROOT)): len(path.read_text(encoding="utf-8").splitlines())
             for path in package_modules()}
    assert {name: lines for name, lines in sizes.items() if lines > MAX_MODULE_LINES} == {}


def test_the_package_finds_its_files_without_the_checkout():
    """configs/, prompts/ and assets/ are found through excel.resources (importlib.resources), never by
    climbing from a module to the checkout above the package."""
    climbing = [str(path.relative_to(ROOT)) for path in package_modules() if "parents[" in path.read_text(encoding="utf-8")]
    assert climbing == []


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= MAX_README_LINES


def test_option_reference_is_generated_from_the_config_tables():
    printed = subprocess.run([sys.executable, "tools/options_reference.py"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
    assert (ROOT / "docs" / "options.md").read_text(encoding="utf-8") == printed, \
        "docs/options.md is stale: python tools/options_reference.py > docs/options.md"
