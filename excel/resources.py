"""The files that ship with the package: ``configs/``, ``prompts/`` and ``assets/``.

In a checkout they are the top-level folders, where the shell launchers, the tools and users find
them (``--config configs/voc.yaml``); the package reaches them through the links ``excel/configs``,
``excel/prompts`` and ``excel/assets``, and a wheel (``pip install .``) carries copies of them as
package data. Either way :func:`packaged` finds them through :mod:`importlib.resources`.

:func:`locate` is the one lookup for such paths: a relative path that starts with one of these
folders is read from the current folder when the file is there (a user's own ``configs/voc.yaml``
included), else from the package. So ``--config configs/voc.yaml``, and a config's
``clip.pretrained: assets/tiny_clip_synthetic.pt``, work from any folder.
"""
from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

FOLDERS = ("configs", "prompts", "assets")


def packaged(relative: str | os.PathLike) -> Path:
    """The package's copy of ``relative`` (e.g. ``configs/voc.yaml``); the file may not exist."""
    return Path(str(files("excel").joinpath(*Path(relative).parts)))


def locate(path: str | os.PathLike) -> Path:
    """``path`` itself when it exists, is absolute or lies outside configs/, prompts/ and assets/;
    otherwise the package's copy of it when the package has that file, else ``path`` unchanged."""
    path = Path(path)
    if path.is_absolute() or not path.parts or path.parts[0] not in FOLDERS or path.exists():
        return path
    copy = packaged(path)
    return copy if copy.is_file() else path
