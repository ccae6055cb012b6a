"""Free-text captions for scenes: several phrasings, synonyms, always consistent with the attributes."""

from __future__ import annotations

import re

import numpy as np

from clipadapt.world.scenes import COLOURS, POSITIONS, SHAPES, SIZES, Scene, WorldObject


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _words(obj: WorldObject, rng: np.random.Generator, synonyms: float) -> tuple[str, str, str, str]:
    colour = obj.colour if rng.random() >= synonyms else str(rng.choice(COLOURS[obj.colour][1]))
    shape = obj.shape if rng.random() >= synonyms else str(rng.choice(SHAPES[obj.shape]))
    size = obj.size if rng.random() >= synonyms else str(rng.choice(SIZES[obj.size][1]))
    where = str(rng.choice(POSITIONS[obj.position][1]))
    return colour, shape, size, where


ONE_OBJECT = (
    "{a_colour} {colour} {shape}",
    "a photo of {a_colour} {colour} {shape}",
    "{a_size} {size} {colour} {shape} {where}",
    "{a_colour} {colour} {shape} {where}",
    "there is {a_size} {size} {colour} {shape}",
    "{a_shape} {shape} coloured {colour}",
    "a picture of {a_size} {size} {colour} {shape} on a {background} background",
    "{a_colour} {colour} object shaped like {a_shape} {shape}",
)
TWO_OBJECTS = (
    "{a_colour} {colour} {shape} and {a_colour2} {colour2} {shape2}",
    "{a_size} {size} {colour} {shape} {where} and {a_size2} {size2} {colour2} {shape2} {where2}",
    "two shapes: {a_colour} {colour} {shape} and {a_colour2} {colour2} {shape2}",
    "{a_colour} {colour} {shape} {relation} {a_colour2} {colour2} {shape2}",
)
BACKGROUND_WORDS = {"plain": "plain", "noise": "noisy", "gradient": "shaded", "stripes": "striped",
                    "dark": "dark", "checker": "checkered", "speckle": "speckled"}


def _relation(first: WorldObject, second: WorldObject) -> str:
    dx, dy = second.cx - first.cx, second.cy - first.cy
    if abs(dx) >= abs(dy):
        return "to the left of" if dx > 0 else "to the right of"
    return "above" if dy > 0 else "below"


def caption(scene: Scene, rng: np.random.Generator, synonyms: float = 0.3,
            phrasings: tuple[int, ...] | None = None) -> str:
    """One caption of ``scene``; ``phrasings`` restricts which patterns may be used (for held-out phrasings)."""
    first = scene.objects[0]
    colour, shape, size, where = _words(first, rng, synonyms)
    fields = dict(colour=colour, shape=shape, size=size, where=where, a_colour=article(colour),
                  a_size=article(size), a_shape=article(shape), background=BACKGROUND_WORDS[scene.background])
    if len(scene.objects) == 1:
        patterns = ONE_OBJECT
    else:
        second = scene.objects[1]
        colour2, shape2, size2, where2 = _words(second, rng, synonyms)
        fields.update(colour2=colour2, shape2=shape2, size2=size2, where2=where2, a_colour2=article(colour2),
                      a_size2=article(size2), relation=_relation(first, second))
        patterns = TWO_OBJECTS
    choices = phrasings if phrasings is not None else tuple(range(len(patterns)))
    pattern = patterns[int(choices[int(rng.integers(len(choices)))]) % len(patterns)]
    return pattern.format(**fields)


def captions(scene: Scene, seed: int, count: int = 5, synonyms: float = 0.3) -> list[str]:
    rng = np.random.default_rng([seed, scene.index, 2])
    return [caption(scene, rng, synonyms) for _ in range(count)]


def vocabulary() -> list[str]:
    """Every word a caption or a world template can use, sorted."""
    texts = list(COLOURS) + list(SHAPES) + list(SIZES) + list(BACKGROUND_WORDS.values())
    texts += [w for _, syns in COLOURS.values() for w in syns] + [w for syns in SHAPES.values() for w in syns]
    texts += [w for _, syns in SIZES.values() for w in syns] + [w for _, ps in POSITIONS.values() for w in ps]
    texts += [re.sub(r"\{[a-z_0-9]+\}", " ", p) for p in ONE_OBJECT + TWO_OBJECTS]
    texts += ["a an the of to left right above below photo picture image shape shapes object thing something",
              "colour color this is it in on with and one two three that coloured colored background"]
    return sorted({w for text in texts for w in re.findall(r"[a-z]+", text.lower())})
