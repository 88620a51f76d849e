"""A synthetic world with known ground truth: patterned, coloured "things" on textured "stuff", with noisy captions.

It exists so the whole method can be run and scored without downloading CLIP weights or a benchmark:
images, per-pixel labels and captions all come from one seed. A thing is named by its colour and surface pattern
("red stripes", "blue dots"); some colour x pattern combinations are held out of the training split (images and
captions) and appear only in the test split, which makes it open-vocabulary.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from synseg.errors import UserError
from synseg.io import atomic_path, ensure_writable_dir
from synseg.render import label_map_image

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (250, 140, 10),
    "yellow": (245, 225, 30),
    "green": (30, 185, 55),
    "blue": (35, 75, 225),
    "purple": (150, 45, 190),
}
# Things are named by colour and a surface pattern a patch can show; their outlines vary and are never named, since a
# small ViT reads local appearance per patch but not global shape (docs/world.md). "paint" is the plain pattern.
PATTERNS: tuple[str, ...] = ("stripes", "dots", "checks", "zigzags", "rings", "paint")
SILHOUETTES: tuple[str, ...] = ("disc", "square", "blob", "ellipse", "triangle", "heart")
STUFF: tuple[str, ...] = ("grass", "water", "sand", "brick wall", "snow", "wooden floor")
THINGS: tuple[str, ...] = tuple(f"{colour} {pattern}" for colour in COLOURS for pattern in PATTERNS)
CLASSES: tuple[str, ...] = STUFF + THINGS
# The named sets of colour x pattern pairs held out of the training split (images and captions). Each holds out one
# pattern per colour and one colour per pattern, so every word is still seen in training; no two sets share a pair.
# "a" is the default: the set of every world before sets had names, which the shipped world CLIP was trained without.
UNSEEN_SETS: dict[str, frozenset[tuple[str, str]]] = {
    "a": frozenset({("red", "rings"), ("orange", "paint"), ("yellow", "stripes"), ("green", "dots"),
                    ("blue", "checks"), ("purple", "zigzags")}),
    "b": frozenset({("red", "dots"), ("orange", "checks"), ("yellow", "zigzags"), ("green", "rings"),
                    ("blue", "paint"), ("purple", "stripes")}),
}
DEFAULT_UNSEEN = "a"
MAX_THINGS = 5
THING_RADIUS = (0.16, 0.30)  # share of the scene side: the smallest spans about 2.5 patches of a patch-8 CLIP at 64 px

# How captions name each stuff class: the plain name most of the time, sometimes a looser word, as people do.
STUFF_PLACES: dict[str, tuple[str, ...]] = {
    "grass": ("on the grass", "on grass", "on green grass", "in a field of grass", "on a lawn"),
    "water": ("on the water", "floating on water", "in the water", "on the sea", "on a lake"),
    "sand": ("on the sand", "on sand", "in the sand", "on a sandy beach", "on the beach"),
    "brick wall": ("in front of a brick wall", "against a brick wall", "on a brick wall", "by an old brick wall",
                   "against a wall of bricks"),
    "snow": ("in the snow", "on snow", "on fresh snow", "on white snow", "in a snowfield"),
    "wooden floor": ("on a wooden floor", "on the wooden floor", "on wood", "on a wooden table", "on old planks"),
}
STUFF_NOUNS: dict[str, tuple[str, ...]] = {
    "grass": ("grass", "green grass", "a lawn"),
    "water": ("water", "the sea", "a lake"),
    "sand": ("sand", "a sandy beach", "the beach"),
    "brick wall": ("a brick wall", "an old brick wall", "bricks"),
    "snow": ("snow", "fresh snow", "a snowfield"),
    "wooden floor": ("a wooden floor", "wood", "wooden planks"),
}
PREFIXES: tuple[str, ...] = ("a view of", "a photo of", "stock photo of", "an image of", "close-up of", "picture of",
                             "illustration of", "there is", "look at")
SUFFIXES: tuple[str, ...] = (" - stock photo", ", stock image", " in high resolution", ", royalty free", " on display",
                             ", top view", " at noon")
JOINERS: tuple[str, ...] = (" and ", " next to ", " beside ", " near ", " with ")
WORLD_RECORD = "world.json"  # in a written split's folder: which held-out set it was drawn with


@dataclass(frozen=True)
class HeldOut:
    """One named held-out set and the vocabularies it gives: `seen_things` (the training split's things) and
    `unseen_things` (only in the test split), both in `THINGS`' order."""

    name: str
    pairs: frozenset[tuple[str, str]]
    seen_things: tuple[str, ...]
    unseen_things: tuple[str, ...]

    @property
    def splits(self) -> dict[str, tuple[str, ...]]:
        """The things each split draws from: the training split never shows an unseen thing, the test split all 36."""
        return {"train": self.seen_things, "test": THINGS}


@functools.cache
def held_out(name: str = DEFAULT_UNSEEN) -> HeldOut:
    """The held-out set registered as `name` in `UNSEEN_SETS`; UserError for an unknown name."""
    if name not in UNSEEN_SETS:
        raise UserError(f"unknown held-out set {name!r}; choose from {', '.join(UNSEEN_SETS)}")
    pairs = UNSEEN_SETS[name]
    unseen = tuple(f"{c} {p}" for c in COLOURS for p in PATTERNS if (c, p) in pairs)
    return HeldOut(name, pairs, tuple(t for t in THINGS if t not in unseen), unseen)


def read_held_out(root: str | Path) -> HeldOut:
    """The held-out set a folder written by `write_split` was drawn with (its `world.json`); a folder without that
    record was written before sets had names, with the default set."""
    record = Path(root) / WORLD_RECORD
    if not record.is_file():
        return held_out()
    return held_out(json.loads(record.read_text(encoding="utf-8"))["unseen"])


@dataclass(frozen=True)
class Thing:
    """One object of a scene, in painting order; `pixels` counts what is left visible after occlusion."""

    colour: str
    pattern: str
    silhouette: str
    center: tuple[float, float]
    radius: float
    angle: float
    pixels: int

    @property
    def phrase(self) -> str:
        return f"{self.colour} {self.pattern}"

    @property
    def class_index(self) -> int:
        return CLASSES.index(self.phrase)


@dataclass(frozen=True)
class Scene:
    """An image with its exact label map over `CLASSES`, the objects it holds and one noisy caption."""

    image: np.ndarray
    label_map: np.ndarray
    stuff: str
    objects: tuple[Thing, ...]
    caption: str
    backdrop: str | None = None  # a second stuff above a wavy horizon, as sky or a wall stands behind a lawn

    @property
    def largest(self) -> Thing | None:
        return max(self.objects, key=lambda thing: thing.pixels, default=None)


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x), cached because every scene of one size reuses them."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    y.setflags(write=False)
    x.setflags(write=False)
    return y, x


def _polygon(u: np.ndarray, v: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test over all pixels at once, one pass per edge."""
    inside = np.zeros(u.shape, dtype=bool)
    x0, y0 = vertices[-1]
    for x1, y1 in vertices:
        if y1 != y0:
            crosses = ((y0 > v) != (y1 > v)) & (u < (x1 - x0) * (v - y0) / (y1 - y0) + x0)
            inside ^= crosses
        x0, y0 = x1, y1
    return inside


def _regular(points: int, radii: tuple[float, ...], turn: float = np.pi / 2) -> np.ndarray:
    angles = turn + np.arange(points * len(radii)) * 2 * np.pi / (points * len(radii))
    r = np.resize(np.asarray(radii), angles.shape)
    return np.stack([r * np.cos(angles), r * np.sin(angles)], axis=1)


_TRIANGLE = _regular(3, (1.2,)) + np.array([0.0, 0.15])


def silhouette_mask(silhouette: str, center: tuple[float, float], radius: float, angle: float, size: int,
                    wobble: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Boolean mask of one outline; (u, v) are object coordinates in radii, v pointing up. `wobble` (amplitude,
    phase) bends the blob's edge, so no two blobs share an outline."""
    y, x = _grid(size)
    dx, dy = (x - center[0]) / radius, (center[1] - y) / radius
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    if silhouette == "disc":
        return u * u + v * v <= 1.0
    if silhouette == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.85
    if silhouette == "ellipse":
        return (u / 1.2) ** 2 + (v / 0.75) ** 2 <= 1.0
    if silhouette == "blob":
        theta = np.arctan2(v, u)
        edge = 1.0 + wobble[0] * np.sin(3 * theta + wobble[1]) + 0.5 * wobble[0] * np.cos(5 * theta - 2 * wobble[1])
        return u * u + v * v <= edge * edge
    if silhouette == "triangle":
        return _polygon(u, v, _TRIANGLE)
    if silhouette == "heart":
        hx, hy = 1.1 * u, 1.1 * v + 0.15
        return (hx * hx + hy * hy - 1.0) ** 3 - hx * hx * hy ** 3 <= 0.0
    raise ValueError(f"unknown silhouette {silhouette!r}")


def pattern_mask(pattern: str, center: tuple[float, float], phase: tuple[float, float], size: int) -> np.ndarray:
    """Where a thing shows its light tint instead of its colour: a motif on a period of 6-8 px, so that every patch of
    a patch-8 CLIP at 64 px holds about one repeat (finer motifs blur away when a scene is resized). Laid in scene
    coordinates with a per-thing `phase` in pixels; rings are centred on the thing."""
    y, x = _grid(size)
    scale = size / 64.0
    px, py = x / scale + phase[0], y / scale + phase[1]
    if pattern == "stripes":  # vertical bands, 3 px of each
        return (px % 6.0) < 3.0
    if pattern == "dots":  # a dot of radius 2.2 on an 8-px grid
        return (px % 8.0 - 4.0) ** 2 + (py % 8.0 - 4.0) ** 2 <= 2.2 ** 2
    if pattern == "checks":  # 4-px squares
        return ((np.floor(px / 4.0) + np.floor(py / 4.0)) % 2) == 0
    if pattern == "zigzags":  # horizontal zigzag lines 2 px thick, 8 px period, 6 px apart
        tooth = np.abs(px % 8.0 - 4.0) - 2.0
        return ((py + tooth) % 6.0) < 2.0
    if pattern == "rings":  # concentric bands of 2 px around the thing's centre, 5 px apart
        r = np.hypot(x - center[0], y - center[1]) / scale
        return (r % 5.0) < 2.0
    if pattern == "paint":
        return np.zeros((size, size), dtype=bool)
    raise ValueError(f"unknown pattern {pattern!r}")


def _noise(rng: np.random.Generator, size: int, cells_y: int, cells_x: int) -> np.ndarray:
    """Smooth value noise in [0, 1]: a coarse random grid, bilinearly upsampled."""
    coarse = rng.random((cells_y + 1, cells_x + 1), dtype=np.float32)
    ty = np.linspace(0, cells_y, size, endpoint=False, dtype=np.float32)
    tx = np.linspace(0, cells_x, size, endpoint=False, dtype=np.float32)
    iy, ix = ty.astype(int), tx.astype(int)
    fy, fx = (ty - iy)[:, None], (tx - ix)[None, :]
    top = coarse[iy][:, ix] * (1 - fx) + coarse[iy][:, ix + 1] * fx
    bottom = coarse[iy + 1][:, ix] * (1 - fx) + coarse[iy + 1][:, ix + 1] * fx
    return top * (1 - fy) + bottom * fy


def _mix(a: tuple[int, int, int], b: tuple[int, int, int], t: np.ndarray) -> np.ndarray:
    """Per-pixel blend of two colours, t in [0, 1] of shape HxW -> HxWx3 float."""
    a_, b_ = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a_ + (b_ - a_) * t[..., None]


def texture(stuff: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """A float HxWx3 texture (0-255) for one stuff class, each with its own colour and structure at 64-128 px."""
    y, x = _grid(size)
    scale = size / 64.0 * rng.uniform(0.8, 1.25)  # stuff structure coarser than the 6-8 px patterns of things
    low = _noise(rng, size, 3, 3)
    if stuff == "grass":
        blades = _noise(rng, size, max(2, size // 24), max(4, size // 2))
        image = _mix((40, 95, 25), (125, 175, 60), 0.6 * blades + 0.4 * low)
    elif stuff == "water":
        wobble = 0.25 * np.sin(2 * np.pi * x / (40 * scale) + rng.uniform(0, 2 * np.pi))
        waves = 0.5 + 0.5 * np.sin(2 * np.pi * (y / (9 * scale) + wobble) + rng.uniform(0, 2 * np.pi))
        image = _mix((20, 60, 130), (60, 130, 200), 0.5 * waves + 0.5 * low)
        image = np.where((waves > 0.93)[..., None], np.float32(215), image)
    elif stuff == "sand":
        ripples = 0.5 + 0.5 * np.sin(2 * np.pi * (x + 0.6 * y) / (22 * scale) + 3 * low)
        image = _mix((190, 160, 110), (232, 208, 160), 0.35 * ripples + 0.65 * low)
        image = image + rng.normal(0, 14, (size, size, 1)).astype(np.float32)
    elif stuff == "brick wall":
        height = 11 * scale
        rows = (y + rng.uniform(0, height)) / height
        offset = (np.floor(rows) % 2) * height + rng.uniform(0, 2 * height)
        bricks = np.floor(rows) * 61 + np.floor((x + offset) / (2 * height)) * 7
        tone = rng.random(4096, dtype=np.float32)[(bricks % 4096).astype(int)]
        image = _mix((135, 45, 30), (185, 85, 55), tone)
        mortar = max(1.0, height / 8)
        seam = (rows % 1.0 < mortar / height) | ((x + offset) % (2 * height) < mortar)
        image = np.where(seam[..., None], np.float32(200), image)
    elif stuff == "snow":
        image = _mix((200, 212, 232), (248, 250, 255), 0.3 + 0.7 * low)
        image = np.where((rng.random((size, size)) < 0.01)[..., None], np.float32(255), image)
    elif stuff == "wooden floor":
        plank = 16 * scale
        boards = (y + rng.uniform(0, plank)) / plank
        index = np.floor(boards)
        grain = 0.5 + 0.5 * np.sin(2 * np.pi * (y / (3.5 * scale) + 2.5 * _noise(rng, size, 2, 6)))
        tone = rng.uniform(0, 1, 256).astype(np.float32)[(index % 256).astype(int)]
        image = _mix((110, 65, 30), (175, 120, 70), 0.45 * tone + 0.3 * grain + 0.25 * low)
        seam = boards % 1.0 < max(1.0, plank / 12) / plank
        image = np.where(seam[..., None], np.float32(60), image)
    else:
        raise ValueError(f"unknown stuff {stuff!r}")
    return image + rng.normal(0, 4, (size, size, 3)).astype(np.float32)


def _paint(image: np.ndarray, mask: np.ndarray, thing: Thing, rng: np.random.Generator) -> None:
    """Fill a mask with a thing's colour and its pattern in a light tint of it, with the lighting and noise a photo
    would add (hue stays put)."""
    size = image.shape[0]
    y, x = _grid(size)
    direction = rng.normal(size=2)
    ramp = (direction[0] * y[mask] + direction[1] * x[mask]) / (np.linalg.norm(direction) * size)
    shade = rng.uniform(0.9, 1.05) * (1.0 + 0.15 * ramp)
    phase = (float(rng.uniform(0, 8)), float(rng.uniform(0, 8)))
    colour = np.asarray(COLOURS[thing.colour], np.float32)
    tint = colour + 0.6 * (255.0 - colour)
    light = pattern_mask(thing.pattern, thing.center, phase, size)[mask]
    pixels = np.where(light[:, None], tint, colour) * shade[:, None]
    image[mask] = pixels + rng.normal(0, 5, pixels.shape).astype(np.float32)


def _describe(thing: Thing, size: int, rng: np.random.Generator) -> str:
    words = thing.phrase
    if rng.random() < 0.3:
        if thing.radius < 0.2 * size:
            words = f"{('small', 'tiny', 'little')[rng.integers(3)]} {words}"
        elif thing.radius > 0.26 * size:
            words = f"{('big', 'large')[rng.integers(2)]} {words}"
    return words


def _join(names: list[str], rng: np.random.Generator) -> str:
    if len(names) == 2:
        return names[0] + JOINERS[rng.integers(len(JOINERS))] + names[1]
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]


def _usually_first(options: tuple[str, ...], share: float, rng: np.random.Generator) -> str:
    """The plain wording with probability `share`, else any of them, as people mostly use the common name."""
    return options[0 if rng.random() < share else rng.integers(len(options))]


def make_caption(stuff: str, objects: tuple[Thing, ...], size: int, rng: np.random.Generator,
                 backdrop: str | None = None) -> str:
    """A caption as the web writes them: salient objects usually named, others often left out, stock-photo noise."""
    largest = max(objects, key=lambda thing: thing.pixels, default=None)
    named = [t for t in objects if rng.random() < (0.92 if t is largest else 0.6)]
    if not named and largest is not None and rng.random() < 0.9:
        named = [largest]
    if rng.random() < 0.5:
        named.sort(key=lambda thing: -thing.pixels)
    else:
        named = [named[i] for i in rng.permutation(len(named))]
    noun = _usually_first(STUFF_NOUNS[stuff], 0.6, rng)
    place = _usually_first(STUFF_PLACES[stuff], 0.5, rng)
    if not named:
        text = noun
    else:
        things = _join([_describe(t, size, rng) for t in named], rng)
        form = rng.random()
        if form < 0.5:
            text = f"{things} {place}"
        elif form < 0.65:
            text = f"{things} with {noun} in the background"
        elif form < 0.75:
            text = f"{noun} with {things}"
        else:
            text = things
    if backdrop is not None and rng.random() < 0.8:
        far = _usually_first(STUFF_NOUNS[backdrop], 0.6, rng)
        text += f" with {far} in the background" if "in the background" not in text else f" and {far}"
    if rng.random() < 0.3 or not named:
        text = f"{PREFIXES[rng.integers(len(PREFIXES))]} {text}"
    if rng.random() < 0.15:
        text += SUFFIXES[rng.integers(len(SUFFIXES))]
    if rng.random() < 0.5:
        text = text[0].upper() + text[1:]
    return text + "." if rng.random() < 0.3 else text


def make_scene(
    seed: int | np.random.Generator,
    size: int = 64,
    split: str = "train",
    stuff: str | None = None,
    things: Sequence[str] | None = None,
    backdrop: float = 0.0,
    max_things: int = MAX_THINGS,
    unseen: str = DEFAULT_UNSEEN,
) -> Scene:
    """One scene from a seed: 1 to `max_things` distinct things of the split's vocabulary on one stuff, overlapping,
    each left >= 40% visible. The training split's vocabulary leaves out the held-out set `unseen` (`UNSEEN_SETS`);
    the test split's is every thing, so a test scene is the same whatever the set.

    `stuff` and `things` pin what the scene holds (layout and caption still come from the seed); an object that
    finds no place leaving the others visible is dropped. With probability `backdrop` a second stuff fills the scene
    above a wavy horizon: with one stuff per image, "the stuff word names the whole background" would be a shortcut
    that captions never contradict.
    """
    splits = held_out(unseen).splits
    if split not in splits:
        raise UserError(f"unknown split {split!r}; choose from {', '.join(splits)}")
    if not 0.0 <= backdrop <= 1.0:
        raise UserError(f"backdrop probability must be in [0, 1], got {backdrop}")
    if not 32 <= size <= 1024:
        raise UserError(f"scene size must be 32-1024 px, got {size}")
    if not 1 <= max_things <= MAX_THINGS:
        raise UserError(f"things per scene must be 1-{MAX_THINGS}, got {max_things}")
    vocabulary = splits[split]
    if stuff is not None and stuff not in STUFF:
        raise UserError(f"unknown stuff {stuff!r}; choose from {', '.join(STUFF)}")
    if things is not None and (not 1 <= len(things) <= MAX_THINGS or len(set(things)) < len(things)
                               or not set(things) <= set(vocabulary)):
        raise UserError(f"things must be 1-{MAX_THINGS} distinct phrases of the {split} vocabulary, got {list(things)}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    stuff = STUFF[rng.integers(len(STUFF))] if stuff is None else stuff
    if things is None:
        things = [vocabulary[i] for i in rng.permutation(len(vocabulary))[: rng.integers(1, max_things + 1)]]
    image = texture(stuff, rng, size)
    base = np.full((size, size), CLASSES.index(stuff), dtype=np.int64)
    far = None
    if backdrop and rng.random() < backdrop:
        far = STUFF[(STUFF.index(stuff) + rng.integers(1, len(STUFF))) % len(STUFF)]
        y, x = _grid(size)
        horizon = size * (rng.uniform(0.3, 0.6) + 0.06 * np.sin(2 * np.pi * x / (size * rng.uniform(0.5, 1.5))
                                                                + rng.uniform(0, 2 * np.pi)))
        above = y < horizon
        image = np.where(above[..., None], texture(far, rng, size), image)
        base[above] = CLASSES.index(far)
    owner = np.full((size, size), -1, dtype=np.int64)
    placed: list[Thing] = []
    masks: list[np.ndarray] = []
    for phrase in things:
        colour, pattern = phrase.split(" ")
        for _ in range(12):
            radius = size * rng.uniform(*THING_RADIUS)
            center = (float(rng.uniform(0.6 * radius, size - 0.6 * radius)),
                      float(rng.uniform(0.6 * radius, size - 0.6 * radius)))
            angle = float(rng.uniform(-np.pi, np.pi))
            silhouette = SILHOUETTES[rng.integers(len(SILHOUETTES))]
            wobble = (float(rng.uniform(0.1, 0.22)), float(rng.uniform(0, 2 * np.pi)))
            mask = silhouette_mask(silhouette, center, radius, angle, size, wobble)
            trial = np.where(mask, len(masks), owner)
            visible = np.bincount(trial[trial >= 0], minlength=len(masks) + 1)
            if all(visible[i] >= 0.4 * m.sum() for i, m in enumerate(masks)):
                owner = trial
                placed.append(Thing(colour, pattern, silhouette, center, radius, angle, 0))
                masks.append(mask)
                break
    for thing, mask in zip(placed, masks):
        _paint(image, mask, thing, rng)
    counts = np.bincount(owner[owner >= 0], minlength=len(masks))
    objects = tuple(replace(thing, pixels=int(n)) for thing, n in zip(placed, counts))
    lookup = np.array([t.class_index for t in objects] + [-1], dtype=np.int64)
    label_map = np.where(owner >= 0, lookup[owner], base)
    pixels = np.clip(image + 0.5, 0, 255).astype(np.uint8)
    return Scene(pixels, label_map, stuff, objects, make_caption(stuff, objects, size, rng, far), far)


def scene_rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    """The generator of scene `index` of a seed, so any one scene can be rebuilt without the ones before it."""
    return np.random.default_rng([seed, stream, index])


def write_split(root: str | Path, n: int, seed: int, split: str = "train", size: int = 64, backdrop: float = 0.0,
                unseen: str = DEFAULT_UNSEEN) -> Path:
    """Write `n` scenes in a VOC-like layout, with `captions.jsonl` ({image, caption} per line) beside them and
    `world.json` naming the held-out set `unseen` (`read_held_out` reads it back).

    Images are lossless PNG. One split per folder: test captions name the held-out things, and a folder that
    mixed them with training captions would leak those phrases into phrase mining.
    """
    if n < 1:
        raise UserError(f"number of scenes must be at least 1, got {n}")
    held = held_out(unseen)
    if split not in held.splits:
        raise UserError(f"unknown split {split!r}; choose from {', '.join(held.splits)}")
    root = ensure_writable_dir(root)
    lists = root / "ImageSets" / "Segmentation"
    other = sorted(p.stem for p in lists.glob("*.txt") if p.stem != split) if lists.is_dir() else []
    if other:
        raise UserError(f"{root} already holds split {other[0]!r}; write each split into its own folder")
    for folder in ("JPEGImages", "SegmentationClass"):
        (root / folder).mkdir(exist_ok=True)
    lists.mkdir(parents=True, exist_ok=True)
    names, records = [], []
    for index in tqdm(range(n), desc=f"writing {split} scenes", unit="scene"):
        scene = make_scene(scene_rng(seed, index), size, split, backdrop=backdrop, unseen=unseen)
        name = f"{split}_{index:06d}"
        with atomic_path(root / "JPEGImages" / f"{name}.png") as tmp:
            Image.fromarray(scene.image).save(tmp, format="PNG")
        label = label_map_image(scene.label_map, len(CLASSES))  # a palette PNG in VOC's colours
        with atomic_path(root / "SegmentationClass" / f"{name}.png") as tmp:
            label.save(tmp, format="PNG")
        names.append(name)
        records.append({"image": f"JPEGImages/{name}.png", "caption": scene.caption})
    for path, text in (
        (lists / f"{split}.txt", "".join(f"{name}\n" for name in names)),
        (root / "classes.txt", "".join(f"{name}\n" for name in CLASSES)),
        (root / "captions.jsonl", "".join(json.dumps(record) + "\n" for record in records)),
        (root / WORLD_RECORD, json.dumps({"unseen": held.name, "unseen_things": list(held.unseen_things)}) + "\n"),
    ):
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return root
