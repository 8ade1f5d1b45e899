"""File I/O shared by every stage: atomic writes, images, class-index masks, split lists, label files,
and the guard of every output.

Every file the project writes goes through :func:`atomic_write`: the content is written to a temporary
file beside the target and renamed over it, so an interrupted run never leaves a half-written file.
New files get the permissions the process umask allows (as ``open`` would give them). Before a tool
writes anything, :func:`check_output_folder` (or :func:`check_output_file`) refuses a destination inside
a dataset or one that a symbolic link would lead elsewhere.
"""
from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError


class DatasetError(ValueError):
    """A dataset file exists but its content is unusable (corrupt, wrong values, wrong size)."""


# The folders of a dataset that hold its images, masks and annotations: no tool writes into them.
DATASET_FOLDER_NAMES = ("JPEGImages", "SegmentationClassAug", "SegmentationClass", "Annotations")
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I")     # single-channel integer modes wider than 8 bits


def _decode(path: str | os.PathLike, kind: str, fix: str) -> Image.Image:
    """The decoded PIL image at ``path``; a missing file or one PIL cannot decode is named with ``fix``.

    An image with more pixels than PIL's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``) is
    refused before it is decoded.
    """
    path = Path(path)
    if path.is_dir():
        raise DatasetError(f"{kind} {path} is a folder, not an image file; give the image file itself")
    if not path.is_file():
        raise FileNotFoundError(f"{kind} file not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except Image.DecompressionBombError as error:
        raise DatasetError(f"{kind} {path} is too large to decode safely ({error}); shrink the image") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DatasetError(f"cannot decode {kind} {path} ({error}); replace the file with {fix}") from error


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as H×W×3 uint8 RGB; grayscale images are stacked to 3 channels.

    16-bit grayscale images are scaled to 8 bits (value / 257, rounded), not clipped at 255.
    """
    image = _decode(path, "image", "a valid image")
    if image.mode in WIDE_MODES:
        wide = np.asarray(image, dtype=np.int64)
        if wide.size and (wide.min() < 0 or wide.max() > 65535):
            raise DatasetError(f"image {path} holds values {wide.min()}..{wide.max()} outside 0..65535 (PIL mode "
                               f"{image.mode}); save it as an 8- or 16-bit image")
        gray = ((wide + 128) // 257).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB")).copy()


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a class-index PNG (palette, grayscale, or 16-bit grayscale holding values 0..255) as an H×W
    uint8 array of indices."""
    mask = _decode(path, "mask", "a valid class-index PNG")
    if mask.mode in WIDE_MODES:
        wide = np.asarray(mask, dtype=np.int64)
        if wide.size and (wide.min() < 0 or wide.max() > 255):
            raise DatasetError(f"mask {path} is a {mask.mode} image holding values {wide.min()}..{wide.max()}; "
                               "class indices must lie in 0..255: save it as an 8-bit class-index PNG")
        return np.ascontiguousarray(wide, dtype=np.uint8)
    if mask.mode not in ("P", "L"):
        raise DatasetError(f"mask {path} has PIL mode {mask.mode}; masks must be single-channel "
                           "class-index PNGs (palette 'P' or grayscale 'L'), not colour images")
    return np.ascontiguousarray(np.asarray(mask), dtype=np.uint8)


def read_output_mask(path: str | os.PathLike, size: tuple[int, int]) -> np.ndarray:
    """A class-index PNG written by an earlier run (``infer.skip_existing``), checked to be H×W = ``size``."""
    label = read_mask(path)
    if label.shape != tuple(size):
        raise DatasetError(f"existing output {path} is {label.shape[0]}×{label.shape[1]} but its image is "
                           f"{size[0]}×{size[1]}; it belongs to another dataset: delete it or set "
                           "infer.skip_existing=false")
    return label.copy()


def voc_palette() -> np.ndarray:
    """The PASCAL VOC colour map: 256×3 uint8, entry i is the colour of class index i."""
    index = np.arange(256)
    palette = np.zeros((256, 3), dtype=np.int64)
    for bit in range(8):
        for channel in range(3):
            palette[:, channel] |= ((index >> channel) & 1) << (7 - bit)
        index = index >> 3
    return palette.astype(np.uint8)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    The target appears complete or not at all; on any error the temporary file is removed and an
    existing file at ``path`` is left as it was. The file gets mode 0666 minus the umask. A target that
    exists but is not a regular file (a device, a folder, a pipe) is refused: renaming over it would
    replace it.
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        raise FileExistsError(errno.EEXIST, "exists and is not a regular file", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a UTF-8 text file atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a binary file atomically."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_json(path: str | os.PathLike, value: object) -> None:
    """Write ``value`` as indented UTF-8 JSON (key order kept), atomically."""
    write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def as_label_map(label: np.ndarray) -> np.ndarray:
    """An H×W class-index map as contiguous uint8; raises on other shapes or values outside 0..255."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label map must be H×W, got shape {label.shape}")
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError(f"label values must lie in 0..255, got {label.min()}..{label.max()}")
    return np.ascontiguousarray(label, dtype=np.uint8)


def write_mask(path: str | os.PathLike, mask: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Write an H×W class-index map as a palette PNG (pixel value = class index, 255 = ignore), atomically.

    ``palette``: 256×3 uint8 colours (default: the VOC palette).
    """
    image = Image.fromarray(as_label_map(mask))
    image.putpalette((voc_palette() if palette is None else np.asarray(palette, dtype=np.uint8)).tobytes())
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def write_image(path: str | os.PathLike, image: np.ndarray, jpeg_quality: int = 95) -> None:
    """Write an H×W×3 uint8 RGB image, atomically: JPEG for a .jpg/.jpeg path, PNG otherwise."""
    picture = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    if Path(path).suffix.lower() in (".jpg", ".jpeg"):
        atomic_write(path, lambda tmp: picture.save(tmp, format="JPEG", quality=jpeg_quality))
    else:
        atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))


def read_labels(path: str | os.PathLike) -> dict[str, list[int]]:
    """Read a ``labels.json`` file: {image id: [foreground class indices]}."""
    path = Path(path)
    try:
        labels = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DatasetError(f"cannot parse label file {path} ({error}); regenerate it with "
                           "tools/make_splits.py") from error
    if not isinstance(labels, dict) or not all(isinstance(v, list) for v in labels.values()):
        raise DatasetError(f"label file {path} must be a JSON object {{image id: [classes]}}")
    return labels


def write_labels(path: str | os.PathLike, labels: dict[str, list[int]]) -> None:
    """Write a ``labels.json`` file, one image per line, ids sorted."""
    lines = [f"{json.dumps(key)}: {json.dumps(labels[key])}" for key in sorted(labels)]
    write_text(path, "{\n" + ",\n".join(lines) + "\n}\n")


def image_id_problem(image_id: str) -> str | None:
    """Why ``image_id`` cannot name files (None when it can).

    An id is a relative path of plain components separated by ``/`` (COCO's ``train2014/…`` style is
    legal): no absolute path, no ``.``/``..`` or empty component, no backslash, no control character.
    """
    if not image_id:
        return "it is empty"
    if any(ord(char) < 32 or ord(char) == 127 for char in image_id):
        return "it contains a control character (NUL, tab, ...)"
    if "\\" in image_id:
        return "it contains a backslash"
    if image_id.startswith("/"):
        return "it is an absolute path"
    if any(part in ("", ".", "..") for part in image_id.split("/")):
        return "it has an empty, '.' or '..' path component"
    return None


def check_split_name(split: str) -> str:
    """Return ``split`` if it is a plain file name (it names ``<split>.txt`` and output folders); else raise."""
    if image_id_problem(split) is not None or "/" in split:
        raise DatasetError(f"split name {split!r} must be a plain file name (it names <split>.txt and output "
                           "folders), e.g. train or val")
    return split


def read_split(path: str | os.PathLike, hint: str = "") -> list[str]:
    """Read a split list (one image id per line, blank lines skipped); raise if missing/empty.

    Every id is checked with :func:`image_id_problem` (ids become file names of outputs).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split list {path} not found; {hint or 'create it'}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DatasetError(f"split list {path} is not UTF-8 text ({error}); list one image id per line") from error
    ids, lines = [], {}
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        image_id, *columns = line.strip().split()
        if columns and not all(_is_integer(column) for column in columns):
            raise DatasetError(f"split list {path}, line {number}: {line.strip()!r} holds whitespace; an image id "
                               "cannot contain spaces (only VOC's integer flag columns may follow it): rename the "
                               "file or fix the line")
        problem = image_id_problem(image_id)
        if problem is not None:
            raise DatasetError(f"split list {path}, line {number}: image id {image_id!r} is not a plain "
                               f"relative name ({problem}); fix or remove the line")
        if image_id in lines:
            raise DatasetError(f"split list {path}, line {number}: image id {image_id!r} is listed again (first on "
                               f"line {lines[image_id]}); it would be counted twice: remove the repeated line")
        lines[image_id] = number
        ids.append(image_id)
    if not ids:
        raise DatasetError(f"split list {path} is empty; list one image id per line")
    return ids


def _is_integer(text: str) -> bool:
    return text.lstrip("+-").isdigit()


def output_path(folder: str | os.PathLike, image_id: str, suffix: str) -> Path:
    """``<folder>/<image_id><suffix>``, refusing ids that would name a file outside ``folder``.

    Symbolic links are followed, so a link inside ``folder`` that leads elsewhere is refused too.
    """
    folder = Path(folder)
    problem = image_id_problem(image_id)
    path = folder / f"{image_id}{suffix}"
    if problem is None:
        resolved, root = path.resolve(), folder.resolve()
        if resolved.is_relative_to(root) and resolved != root:
            return path
    raise DatasetError(f"image id {image_id!r} would write {path} outside the output folder {folder}"
                       f"{f' ({problem})' if problem else ''}; fix the split list")


def dataset_folder_of(path: Path) -> Path | None:
    """The first folder on the (resolved) path that is named like a dataset's image, mask or annotation
    folder (DATASET_FOLDER_NAMES), or None."""
    resolved = path.resolve()
    for folder in (*reversed(resolved.parents), resolved):
        if folder.name in DATASET_FOLDER_NAMES:
            return folder
    return None


def _refuse_protected(folder: Path, protected: Sequence[str | os.PathLike], holds: bool) -> None:
    """Raise if ``folder`` lies inside a folder of ``protected`` (or, with ``holds``, contains one)."""
    target = folder.resolve()
    for guarded in map(Path, protected):
        inside = target.is_relative_to(guarded.resolve())
        if inside or (holds and guarded.resolve().is_relative_to(target)):
            raise DatasetError(f"output folder {folder} {'lies inside' if inside else 'holds'} the dataset folder "
                               f"{guarded}; never write into a dataset: choose another output folder (--out / "
                               "work_dir)")


def check_output_folder(folder: str | os.PathLike, protected: Sequence[str | os.PathLike] = (),
                        inside: Sequence[str] = (), allow: Sequence[str] = ()) -> Path:
    """The guard every tool passes before it writes into ``folder``; returns ``folder`` as a Path.

    Refused with a :class:`DatasetError` naming the path: ``folder`` is an existing file; it lies inside a
    folder of ``protected`` (a configured dataset's image / mask / annotation folders); it lies inside any
    folder named like a dataset's (``DATASET_FOLDER_NAMES`` other than ``allow``: the one tool that writes
    masks allows their folder); one of ``inside`` (the sub-folders and files the tool writes, relative to
    ``folder``) is a symbolic link that leads out of ``folder``, or holds a folder of ``protected`` (it
    receives files named by image ids, which may hold sub-folders).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DatasetError(f"output folder {folder} is a file, not a folder; give a folder (--out / work_dir)")
    _refuse_protected(folder, protected, holds=False)
    named = dataset_folder_of(folder)
    if named is not None and named.name not in allow:
        raise DatasetError(f"output folder {folder} lies inside {named}, a dataset's {named.name} folder; never "
                           "write into a dataset: choose another output folder (--out / work_dir)")
    root = folder.resolve()
    for relative in inside:
        path = folder / relative
        if path.is_symlink() or path.exists():
            resolved = path.resolve()
            if not resolved.is_relative_to(root) or resolved == root:
                raise DatasetError(f"{path} is a symbolic link to {resolved}, outside the output folder {folder}; "
                                   "nothing is written through it: remove the link or choose another output "
                                   "folder")
        _refuse_protected(path, protected, holds=True)
    return folder


def check_output_file(path: str | os.PathLike, protected: Sequence[str | os.PathLike] = ()) -> Path:
    """The guard of a tool that writes one file: its folder passes :func:`check_output_folder` (outside
    every dataset) and ``path`` is not a folder; returns ``path`` as a Path."""
    path = Path(path)
    if path.is_dir():
        raise DatasetError(f"output {path} is a folder; give the path of the file to write")
    check_output_folder(path.parent, protected)
    return path


def write_split(path: str | os.PathLike, ids: Sequence[str]) -> None:
    """Write a split list, one image id per line."""
    write_text(path, "".join(f"{image_id}\n" for image_id in ids))
