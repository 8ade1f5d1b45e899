"""Procedurally drawn scenes of simple shapes: a self-contained stand-in for VOC and for CLIP's
image–text pretraining data.

A scene holds 1–3 objects of five classes (disc, square, triangle, star, ring) in named colours,
drawn with a dark outline, on a textured background (smooth noise, stripes or a gradient, in random
light colours that say nothing about the objects). Rendering returns the RGB image, a VOC-style class-index mask (0 background,
1..5 classes, 255 on a thin band along every label boundary) and the object list, from which
captions such as "a photo of a red disc and a blue star." are written (excel/prep/synthetic_captions.py).
A VOC-layout dataset of such scenes: excel/prep/synthetic_dataset.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from excel.classes import IGNORE_INDEX

CLASS_NAMES: tuple[str, ...] = ("disc", "square", "triangle", "star", "ring")
BACKGROUND_KINDS: tuple[str, ...] = ("noise", "stripes", "gradient")

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35), "orange": (245, 135, 20), "yellow": (240, 215, 35),
    "green": (40, 160, 55), "cyan": (40, 205, 215), "blue": (35, 70, 205),
    "purple": (125, 45, 170), "pink": (245, 125, 185), "brown": (125, 75, 35),
    "white": (245, 245, 245), "black": (20, 20, 20), "grey": (128, 128, 128),
}

_STAR_INNER_RATIO = 0.45
_MIN_COLOUR_CONTRAST = 90.0     # RGB distance between an object colour and each background colour
_MIN_VISIBLE_FRACTION = 0.3     # of an object's area that must stay labelled after occlusion
_MIN_VISIBLE_PIXELS = 12
_BACKGROUND_RANGE = (80.0, 235.0)    # background colours stay lighter than the dark outlines


@dataclass(frozen=True)
class SceneObject:
    """One drawn shape: class index 1..5, colour name, centre (x, y) and radius in pixels, rotation."""

    class_index: int
    colour: str
    centre: tuple[float, float]
    radius: float
    angle: float
    inner_ratio: float

    @property
    def class_name(self) -> str:
        return CLASS_NAMES[self.class_index - 1]


@dataclass(frozen=True)
class Scene:
    """A rendered scene: image H×W×3 uint8 RGB, mask H×W uint8 (0, 1..5, 255), its objects."""

    image: np.ndarray
    mask: np.ndarray
    objects: tuple[SceneObject, ...]
    background: str

    @property
    def labels(self) -> list[int]:
        """Sorted class indices present in the mask."""
        return sorted(int(v) for v in np.unique(self.mask) if 0 < v < IGNORE_INDEX)


# ----------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------

def _pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates x, y, each H×W float32."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    return xs, ys


def _polygon_vertices(obj: SceneObject) -> np.ndarray:
    """V×2 polygon vertices (x, y) of a square, triangle or star."""
    name = obj.class_name
    if name == "square":
        angles = obj.angle + np.pi / 4 + np.arange(4) * np.pi / 2
        radii = np.full(4, obj.radius)
    elif name == "triangle":
        angles = obj.angle - np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        radii = np.full(3, obj.radius)
    elif name == "star":
        angles = obj.angle - np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, obj.radius, obj.radius * obj.inner_ratio)
    else:
        raise ValueError(f"class {name!r} is not a polygon")
    return np.stack([obj.centre[0] + radii * np.cos(angles),
                     obj.centre[1] + radii * np.sin(angles)], axis=1)


def polygon_mask(xs: np.ndarray, ys: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even–odd inside test of H×W points against a V×2 polygon: H×W bool."""
    x0, y0 = vertices[:, 0, None, None], vertices[:, 1, None, None]
    x1, y1 = np.roll(vertices[:, 0], 1)[:, None, None], np.roll(vertices[:, 1], 1)[:, None, None]
    crosses = (y0 > ys) != (y1 > ys)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = x0 + (ys - y0) * (x1 - x0) / (y1 - y0)
    return np.logical_xor.reduce(crosses & (xs < x_cross), axis=0)


def object_mask(obj: SceneObject, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Pixels covered by one object: H×W bool."""
    distance_sq = (xs - obj.centre[0]) ** 2 + (ys - obj.centre[1]) ** 2
    if obj.class_name == "disc":
        return distance_sq <= obj.radius ** 2
    if obj.class_name == "ring":
        return (distance_sq <= obj.radius ** 2) & (distance_sq >= (obj.radius * obj.inner_ratio) ** 2)
    return polygon_mask(xs, ys, _polygon_vertices(obj))


def boundary_band(label: np.ndarray, half_width: int) -> np.ndarray:
    """Pixels within `half_width` of a change of label (both sides): H×W bool."""
    kernel = np.ones((2 * half_width + 1, 2 * half_width + 1), np.uint8)
    return cv2.dilate(label, kernel) != cv2.erode(label, kernel)


# ----------------------------------------------------------------------------------------------
# Textures
# ----------------------------------------------------------------------------------------------

def _blend(weight: np.ndarray, colour_a: np.ndarray, colour_b: np.ndarray) -> np.ndarray:
    """Per-pixel mix of two RGB colours by an H×W weight in [0, 1]: H×W×3 float32."""
    return colour_a + weight[..., None] * (colour_b - colour_a)


def _direction(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Coordinate along a random direction, scaled to the image size: H×W float32."""
    theta = rng.uniform(0, np.pi)
    return (xs * np.cos(theta) + ys * np.sin(theta)) / max(xs.shape)


def background_texture(rng: np.random.Generator, kind: str, xs: np.ndarray, ys: np.ndarray,
                       colour_a: np.ndarray, colour_b: np.ndarray) -> np.ndarray:
    """A background of the given kind mixing two colours: H×W×3 float32 on the 0–255 scale."""
    height, width = xs.shape
    if kind == "gradient":
        t = _direction(rng, xs, ys)
        weight = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    elif kind == "stripes":
        cycles = rng.uniform(2.0, 9.0)
        wave = np.sin(2 * np.pi * cycles * _direction(rng, xs, ys) + rng.uniform(0, 2 * np.pi))
        weight = (wave > 0).astype(np.float32) if rng.random() < 0.5 else 0.5 + 0.5 * wave
    elif kind == "noise":
        cells = int(rng.integers(3, 11))
        coarse = rng.random((cells, cells)).astype(np.float32)
        weight = np.clip(cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC), 0, 1)
    else:
        raise ValueError(f"unknown background kind {kind!r}; use one of {BACKGROUND_KINDS}")
    return _blend(weight.astype(np.float32), colour_a, colour_b)


def _object_fill(rng: np.random.Generator, obj: SceneObject, xs: np.ndarray,
                 ys: np.ndarray) -> np.ndarray:
    """The object's colour with a jitter and a soft linear shading across it: H×W×3 float32."""
    base = np.asarray(COLOURS[obj.colour], np.float32) + rng.uniform(-18, 18, 3).astype(np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    along = ((xs - obj.centre[0]) * np.cos(theta) + (ys - obj.centre[1]) * np.sin(theta)) / obj.radius
    shade = 1.0 + rng.uniform(0.05, 0.25) * np.clip(along, -1, 1)
    return base * shade[..., None]


# ----------------------------------------------------------------------------------------------
# Scenes
# ----------------------------------------------------------------------------------------------

def _contrasting_colour(rng: np.random.Generator, background_colours: Sequence[np.ndarray],
                        names: Sequence[str]) -> str:
    """A colour name among `names` far enough from every background colour (any of them if none is)."""
    names = list(names)
    rgb = np.asarray([COLOURS[n] for n in names], np.float32)
    distance = np.min([np.linalg.norm(rgb - c, axis=1) for c in background_colours], axis=0)
    allowed = [n for n, d in zip(names, distance) if d >= _MIN_COLOUR_CONTRAST]
    return str(rng.choice(allowed or names))


def _place_objects(rng: np.random.Generator, height: int, width: int, count: int,
                   background_colours: Sequence[np.ndarray], colours: Sequence[str]) -> list[SceneObject]:
    """Up to `count` objects with random class, colour, size, pose; overlaps kept small."""
    side = min(height, width)
    scale = (1.0, 0.85, 0.72)[min(count, 3) - 1]
    objects: list[SceneObject] = []
    for _ in range(count):
        for _attempt in range(50):
            radius = max(rng.uniform(0.13, 0.3) * side * scale, 10.0)
            margin = 0.6 * radius
            centre = (rng.uniform(margin, width - margin), rng.uniform(margin, height - margin))
            if all(np.hypot(centre[0] - o.centre[0], centre[1] - o.centre[1]) >= 0.8 * (radius + o.radius)
                   for o in objects):
                break
        else:
            break
        class_index = int(rng.integers(1, len(CLASS_NAMES) + 1))
        inner = rng.uniform(0.4, 0.62) if CLASS_NAMES[class_index - 1] == "ring" else _STAR_INNER_RATIO
        objects.append(SceneObject(class_index, _contrasting_colour(rng, background_colours, colours), centre,
                                   float(radius), float(rng.uniform(0, 2 * np.pi)), float(inner)))
    return objects


def _bounding_window(obj: SceneObject, height: int, width: int) -> tuple[slice, slice]:
    """Rows and columns of the image that the object can cover."""
    x, y, r = obj.centre[0], obj.centre[1], obj.radius + 1
    return (slice(max(int(y - r), 0), min(int(y + r) + 1, height)),
            slice(max(int(x - r), 0), min(int(x + r) + 1, width)))


def _outline(covered: np.ndarray, width: int) -> np.ndarray:
    """The inner rim, `width` pixels wide, of a bool region (none where it meets the window edge)."""
    kernel = np.ones((3, 3), np.uint8)
    inner = cv2.erode(covered.astype(np.uint8), kernel, iterations=width, borderType=cv2.BORDER_REPLICATE)
    return covered & (inner == 0)


def _compose(rng: np.random.Generator, objects: Sequence[SceneObject], background: np.ndarray,
             xs: np.ndarray, ys: np.ndarray, ignore_band: int,
             outline_width: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """Paint objects in order over the background, each with a dark outline: image, mask, and
    whether every object stays visibly labelled (later objects occlude earlier ones)."""
    image = background.copy()
    owner = np.zeros(xs.shape, np.int16)                      # 0 background, i + 1 object i
    areas = []
    for i, obj in enumerate(objects):
        window = _bounding_window(obj, *xs.shape)
        covered = object_mask(obj, xs[window], ys[window])
        areas.append(int(covered.sum()))
        image[window][covered] = _object_fill(rng, obj, xs[window], ys[window])[covered]
        if outline_width > 0:
            image[window][_outline(covered, outline_width)] = rng.uniform(0, 40)
        owner[window][covered] = i + 1
    class_of_owner = np.asarray([0] + [o.class_index for o in objects], np.uint8)
    mask = class_of_owner[owner]
    if ignore_band > 0:
        mask[boundary_band(mask, ignore_band)] = IGNORE_INDEX
    visible = np.bincount(owner[mask != IGNORE_INDEX].ravel(), minlength=len(objects) + 1)[1:]
    ok = all(v >= max(_MIN_VISIBLE_PIXELS, _MIN_VISIBLE_FRACTION * a) for v, a in zip(visible, areas))
    return image, mask, ok


def render_scene(rng: np.random.Generator, height: int, width: int, max_objects: int = 3,
                 ignore_band: int = 1, noise_std: tuple[float, float] = (2.0, 9.0),
                 texture_contrast: float = 50.0, outline_width: int = 2,
                 colours: Sequence[str] | None = None, max_attempts: int = 20) -> Scene:
    """Draw one scene of 1..max_objects objects on a textured background.

    Returns image H×W×3 uint8 RGB and mask H×W uint8; `ignore_band` is the half width in pixels of
    the 255 band drawn along label boundaries (0 for none); `texture_contrast` is the standard
    deviation (per RGB channel, 0–255 scale) of the second background colour around the first,
    so textures stay visible without drowning the objects; objects are drawn with a dark outline
    `outline_width` pixels wide (0 for none), like a drawing; `colours` restricts the object
    colours to some names of COLOURS (default: all). Scenes where occlusion would hide most
    of an object are redrawn, so every listed object is visible in the mask.
    """
    if height < 32 or width < 32:
        raise ValueError(f"scene size {height}×{width} is too small; use at least 32×32")
    if not 1 <= max_objects <= 3:
        raise ValueError(f"max_objects={max_objects} must be 1, 2 or 3")
    colours = list(COLOURS) if colours is None else list(colours)
    unknown = sorted(set(colours) - set(COLOURS))
    if unknown or not colours:
        raise ValueError(f"colours={colours} must be a non-empty list of names from {list(COLOURS)}")
    xs, ys = _pixel_grid(height, width)
    for _ in range(max_attempts):
        kind = str(rng.choice(BACKGROUND_KINDS))
        colour_a = rng.uniform(*_BACKGROUND_RANGE, 3).astype(np.float32)
        colour_b = np.clip(colour_a + rng.normal(0, texture_contrast, 3), *_BACKGROUND_RANGE).astype(np.float32)
        count = int(rng.integers(1, max_objects + 1))
        objects = _place_objects(rng, height, width, count, (colour_a, colour_b), colours)
        texture = background_texture(rng, kind, xs, ys, colour_a, colour_b)
        image, mask, ok = _compose(rng, objects, texture, xs, ys, ignore_band, outline_width)
        if ok:
            image += rng.standard_normal(image.shape, dtype=np.float32) * rng.uniform(*noise_std)
            return Scene(np.clip(image, 0, 255).round().astype(np.uint8), mask, tuple(objects), kind)
    raise RuntimeError(f"could not draw a {height}×{width} scene with visible objects in "
                       f"{max_attempts} attempts; use a larger image size")
