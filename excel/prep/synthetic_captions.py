"""Captions of synthetic scenes for the tiny CLIP's image–text pretraining: complete or single-object,
with or without colours, sometimes with a filler word, the background kind or a class attribute.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from excel.prep.synthetic import Scene, SceneObject, render_scene

# Short statements that hold for every instance of a class; pretraining captions sometimes carry
# one, so a knowledge base of class descriptions speaks words the text encoder has seen.
CLASS_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "disc": ("it is round", "it is a filled circle", "it has a smooth curved edge"),
    "square": ("it has four equal sides", "it has four corners", "it has four right angles"),
    "triangle": ("it has three sides", "it has three corners", "it has a pointed tip"),
    "star": ("it has five points", "it has sharp spikes", "it has ten edges"),
    "ring": ("it has a hole in the middle", "it is a hollow circle", "it is round and empty inside"),
}

CAPTION_TEMPLATES: tuple[str, ...] = (
    "a photo of {}.", "a picture of {}.", "an image of {}.", "a drawing of {}.",
    "a rendering of {}.", "a photo showing {}.", "there is {}.", "{}.",
)
# Words with no bearing on the scene, inserted before object names so that the text encoder learns
# to look past unfamiliar modifiers (as in the prompt "a clean origami disc.", whose adjectives never
# appear in pretraining captions).
FILLER_WORDS: tuple[str, ...] = (
    "small", "large", "big", "little", "simple", "flat", "shiny", "bright", "nice", "paper",
    "plastic", "wooden", "painted", "cartoon", "neat", "tidy", "tiny", "plain",
)
BACKGROUND_PHRASES: dict[str, str] = {"noise": "on noise", "stripes": "on stripes",
                                      "gradient": "on a gradient"}


@dataclass(frozen=True)
class Caption:
    """A caption and what it asserts: `classes` are the class indices it names (one entry per
    object, repeats allowed), `colours` their colour names or None where the caption names no
    colour, `complete` whether it lists every object, `background` the background kind it names."""

    text: str
    classes: tuple[int, ...]
    colours: tuple[str, ...] | None
    complete: bool
    background: str | None


def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _object_phrase(class_name: str, colour: str | None, filler: str | None = None) -> str:
    return _with_article(" ".join(w for w in (filler, colour, class_name) if w))


def caption(objects: Sequence[SceneObject], template: str = "a photo of {}.",
            with_colour: bool = True, background: str | None = None) -> str:
    """A caption naming every object in order, e.g. "a photo of a red disc and a blue star."."""
    if not objects:
        raise ValueError("a caption needs at least one object")
    phrases = [_object_phrase(o.class_name, o.colour if with_colour else None) for o in objects]
    text = " and ".join(phrases)
    if background is not None:
        text = f"{text} {BACKGROUND_PHRASES[background]}"
    return template.format(text)


def sample_caption(scene: Scene, rng: np.random.Generator) -> Caption:
    """A random caption of a scene for contrastive pretraining.

    Mixes complete captions (every object, with or without colours, in random order) and captions
    naming a single object; sometimes adds a filler adjective, the background kind, or (for a
    single named class) one of its attribute statements.
    """
    order = rng.permutation(len(scene.objects))
    objects = [scene.objects[i] for i in order]
    mode = rng.random()
    if mode < 0.35:
        objects, complete = objects[:1], len(scene.objects) == 1
    else:
        complete = True
    with_colour = rng.random() < (0.5 if len(objects) == 1 else 0.6)
    phrases = [_object_phrase(o.class_name, o.colour if with_colour else None,
                              str(rng.choice(FILLER_WORDS)) if rng.random() < 0.25 else None)
               for o in objects]
    text = " and ".join(phrases)
    background = scene.background if rng.random() < 0.3 else None
    if background is not None:
        text = f"{text} {BACKGROUND_PHRASES[background]}"
    text = str(rng.choice(CAPTION_TEMPLATES)).format(text)
    if len({o.class_index for o in objects}) == 1 and rng.random() < 0.25:
        text = f"{text} {rng.choice(CLASS_ATTRIBUTES[objects[0].class_name])}."
    return Caption(text=text, classes=tuple(o.class_index for o in objects),
                   colours=tuple(o.colour for o in objects) if with_colour else None,
                   complete=complete, background=background)


def caption_pairs(seed: int, size: int = 160, max_objects: int = 3) -> Iterator[tuple[np.ndarray, str]]:
    """Endless (image size×size×3 uint8, caption text) pairs for pretraining, deterministic by seed."""
    rng = np.random.default_rng(seed)
    while True:
        scene = render_scene(rng, size, size, max_objects=max_objects)
        yield scene.image, sample_caption(scene, rng).text
