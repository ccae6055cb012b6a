"""A seeded procedural world: coloured shapes of several kinds, sizes and positions on varied backgrounds.

Every scene is drawn from ``numpy.random.default_rng([seed, index])``, so item ``i`` of a stream is the same
bytes whoever asks for it, and streams can be generated in any order or in parallel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

# name -> (RGB, synonyms used in captions)
COLOURS: dict[str, tuple[tuple[int, int, int], tuple[str, ...]]] = {
    "red": ((215, 35, 35), ("crimson", "scarlet")),
    "orange": ((240, 140, 20), ("tangerine", "amber")),
    "yellow": ((235, 215, 30), ("golden", "lemon")),
    "green": ((40, 170, 60), ("emerald", "grassy")),
    "cyan": ((30, 200, 210), ("turquoise", "aqua")),
    "blue": ((35, 70, 215), ("navy", "cobalt")),
    "purple": ((135, 50, 185), ("violet", "lilac")),
    "pink": ((245, 120, 185), ("rose", "magenta")),
}
SHAPES: dict[str, tuple[str, ...]] = {
    "circle": ("disc", "round dot"),
    "square": ("box", "block"),
    "triangle": ("wedge", "pyramid"),
    "diamond": ("rhombus", "lozenge"),
    "cross": ("plus sign", "plus"),
    "star": ("pentagram", "starburst"),
}
SIZES: dict[str, tuple[tuple[float, float], tuple[str, ...]]] = {  # radius as a share of the image side
    "small": ((0.12, 0.15), ("tiny", "little")),
    "large": ((0.21, 0.26), ("big", "huge")),
}
# 3x3 grid cells: name -> (column, row), and how captions say it
POSITIONS: dict[str, tuple[tuple[int, int], tuple[str, ...]]] = {
    "top left": ((0, 0), ("in the top left", "near the top left corner")),
    "top": ((1, 0), ("at the top", "near the top edge")),
    "top right": ((2, 0), ("in the top right", "near the top right corner")),
    "left": ((0, 1), ("on the left", "near the left edge")),
    "center": ((1, 1), ("in the center", "in the middle")),
    "right": ((2, 1), ("on the right", "near the right edge")),
    "bottom left": ((0, 2), ("in the bottom left", "near the bottom left corner")),
    "bottom": ((1, 2), ("at the bottom", "near the bottom edge")),
    "bottom right": ((2, 2), ("in the bottom right", "near the bottom right corner")),
}
BACKGROUNDS = ("plain", "noise", "gradient")
SHIFTED_BACKGROUNDS = ("stripes", "dark", "checker", "speckle")
COLOUR_NAMES, SHAPE_NAMES = tuple(COLOURS), tuple(SHAPES)


def held_out_combinations() -> frozenset[tuple[str, str]]:
    """16 colour-shape pairs never shown in pretraining: each colour twice, each shape two or three times."""
    pairs = set()
    for i, colour in enumerate(COLOUR_NAMES):
        pairs.add((colour, SHAPE_NAMES[i % 6]))
        pairs.add((colour, SHAPE_NAMES[(i + 3) % 6]))
    return frozenset(pairs)


@dataclass(frozen=True)
class WorldObject:
    colour: str
    shape: str
    size: str
    position: str
    cx: float  # centre, in pixels
    cy: float
    radius: float


@dataclass(frozen=True)
class Scene:
    objects: tuple[WorldObject, ...]
    background: str
    index: int

    def attributes(self) -> dict:
        return {"background": self.background, "objects": [o.__dict__ for o in self.objects]}


@dataclass
class SceneSpec:
    """What a stream of scenes may contain."""

    resolution: int = 64
    min_objects: int = 1
    max_objects: int = 2
    backgrounds: tuple[str, ...] = BACKGROUNDS
    combinations: tuple[tuple[str, str], ...] | None = None  # allowed (colour, shape); None: all
    exclude: frozenset[tuple[str, str]] = field(default_factory=frozenset)
    pixel_noise: float = 0.0  # std of additive Gaussian noise, in 0..255 units

    def allowed(self) -> list[tuple[str, str]]:
        pairs = self.combinations or tuple((c, s) for c in COLOUR_NAMES for s in SHAPE_NAMES)
        return [p for p in pairs if p not in self.exclude]


def sample_scene(spec: SceneSpec, seed: int, index: int, combination: tuple[str, str] | None = None) -> Scene:
    """Draw scene ``index`` of stream ``seed``; ``combination`` forces the first object's colour and shape."""
    rng = np.random.default_rng([seed, index, 0])
    allowed = spec.allowed()
    n_objects = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    cells = rng.choice(len(POSITIONS), size=n_objects, replace=False)
    res = spec.resolution
    objects = []
    for k in range(n_objects):
        colour, shape = combination if (k == 0 and combination) else allowed[int(rng.integers(len(allowed)))]
        size = ("small", "large")[int(rng.integers(2))]
        position = list(POSITIONS)[int(cells[k])]
        (col, row), _ = POSITIONS[position]
        low, high = SIZES[size][0]
        radius = float(rng.uniform(low, high)) * res
        jitter = res / 3 * 0.18
        cx = (col + 0.5) * res / 3 + float(rng.uniform(-jitter, jitter))
        cy = (row + 0.5) * res / 3 + float(rng.uniform(-jitter, jitter))
        objects.append(WorldObject(colour, shape, size, position, cx, cy, radius))
    background = spec.backgrounds[int(rng.integers(len(spec.backgrounds)))]
    return Scene(tuple(objects), background, index)


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= r * 0.82
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r * 1.05
    if shape == "triangle":
        return (dy <= r * 0.75) & (np.abs(dx) <= (dy + r) * 0.62)
    if shape == "cross":
        arm = r * 0.32
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    if shape == "star":
        angle = np.arctan2(dx, -dy)
        reach = r * (0.62 + 0.38 * np.cos(5 * angle))
        return dx * dx + dy * dy <= reach * reach
    raise ValueError(f"unknown shape '{shape}'")


@lru_cache(maxsize=8)
def _grid(res: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x), shared read-only between calls."""
    y, x = np.mgrid[0:res, 0:res].astype(np.float32) + 0.5
    y.setflags(write=False)
    x.setflags(write=False)
    return y, x


def _background(kind: str, res: int, rng: np.random.Generator) -> np.ndarray:
    base = rng.uniform(150, 235, 3) * rng.uniform(0.85, 1.0)  # light, desaturated
    base = base.mean() + (base - base.mean()) * 0.3
    canvas = np.broadcast_to(base, (res, res, 3)).astype(np.float32).copy()
    y, x = (g - 0.5 for g in _grid(res))
    y, x = y / res, x / res
    if kind == "noise":
        canvas += rng.normal(0, 10, (res, res, 1))
    elif kind == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        canvas += (np.cos(angle) * x + np.sin(angle) * y - 0.5)[..., None] * 60
    elif kind == "stripes":
        period = rng.uniform(0.08, 0.2)
        canvas += (np.sin(2 * np.pi * (x + y * rng.uniform(-1, 1)) / period) * 12)[..., None]
    elif kind == "dark":
        canvas = canvas * 0.35 + rng.normal(0, 6, (res, res, 1))
    elif kind == "checker":
        cell = int(rng.integers(4, 9))
        board = ((np.arange(res)[:, None] // cell + np.arange(res)[None, :] // cell) % 2).astype(np.float32)
        canvas += (board[..., None] - 0.5) * 70
    elif kind == "speckle":
        canvas += rng.normal(0, 40, (res, res, 3))
    elif kind != "plain":
        raise ValueError(f"unknown background '{kind}'")
    return canvas


def render_scene(scene: Scene, spec: SceneSpec, seed: int) -> np.ndarray:
    """HxWx3 uint8 image of ``scene`` (colours get a little per-object jitter)."""
    rng = np.random.default_rng([seed, scene.index, 1])
    res = spec.resolution
    canvas = _background(scene.background, res, rng)
    y, x = _grid(res)
    for obj in scene.objects:
        reach = int(np.ceil(obj.radius * 1.1)) + 1  # every shape fits in this box around its centre
        y0, y1 = max(0, int(obj.cy) - reach), min(res, int(obj.cy) + reach + 1)
        x0, x1 = max(0, int(obj.cx) - reach), min(res, int(obj.cx) + reach + 1)
        mask = _shape_mask(obj.shape, x[y0:y1, x0:x1] - obj.cx, y[y0:y1, x0:x1] - obj.cy, obj.radius)
        colour = np.array(COLOURS[obj.colour][0], np.float32) + rng.normal(0, 8, 3)
        canvas[y0:y1, x0:x1][mask] = colour
    if spec.pixel_noise > 0:
        canvas += rng.normal(0, spec.pixel_noise, canvas.shape)
    return np.clip(canvas, 0, 255).astype(np.uint8)


def generate_images(spec: SceneSpec, seed: int, count: int, start: int = 0,
                    combinations: list[tuple[str, str]] | None = None) -> tuple[np.ndarray, list[Scene]]:
    """``count`` scenes from index ``start``; ``combinations[i]`` forces scene i's first object."""
    images = np.empty((count, spec.resolution, spec.resolution, 3), np.uint8)
    scenes = []
    for i in range(count):
        scene = sample_scene(spec, seed, start + i, combinations[i] if combinations else None)
        images[i] = render_scene(scene, spec, seed)
        scenes.append(scene)
    return images, scenes
