"""A synthetic world with exact ground truth, and a tiny CLIP trained on it, to test the method end to end offline."""
from __future__ import annotations

from pathlib import Path

from synseg.synthetic.world import (
    CLASSES,
    COLOURS,
    DEFAULT_UNSEEN,
    PATTERNS,
    SILHOUETTES,
    STUFF,
    STUFF_NOUNS,
    THINGS,
    UNSEEN_SETS,
    HeldOut,
    Scene,
    Thing,
    held_out,
    make_scene,
    read_held_out,
    scene_rng,
    write_split,
)

WORLD_CLIP = "synseg-world-clip"  # the world CLIP's open_clip architecture (models/architectures/synseg-world-clip.json)
# world CLIP architectures (models/architectures): the shipped 4-block one and a 12-block one, ViT-B/16's depth
WORLD_CLIPS = (WORLD_CLIP, "synseg-world-clip-deep")
ASSETS = Path(__file__).resolve().parents[1] / "assets"
SHIPPED_CLIP = ASSETS / "world-clip.safetensors"  # the world CLIP's weights, shipped inside synseg (held-out set "a")
# the world CLIP shipped for each held-out set, trained without that set (docs/world.md: how each was trained)
SHIPPED_CLIPS: dict[str, Path] = {"a": SHIPPED_CLIP, "b": ASSETS / "world-clip-b.safetensors"}
SHIPPED_DEMO = ASSETS / "world-demo"  # `synseg demo`'s checkpoint (docs/world.md: how it is rebuilt)
SCENE_SIZE = 64  # the world CLIP's input size: scenes are drawn at it and nothing is resampled
BACKDROP = 0.5  # share of scenes with a second stuff behind a horizon
PROTOCOL = "whole"  # 64-px scenes: quadrant views would only upsample 32-px crops

__all__ = [
    "ASSETS", "BACKDROP", "PROTOCOL", "SCENE_SIZE", "SHIPPED_CLIP", "SHIPPED_CLIPS", "SHIPPED_DEMO", "WORLD_CLIP",
    "WORLD_CLIPS",
    "CLASSES", "COLOURS", "DEFAULT_UNSEEN", "PATTERNS", "SILHOUETTES", "STUFF", "STUFF_NOUNS", "THINGS", "UNSEEN_SETS",
    "HeldOut", "Scene", "Thing", "held_out", "make_scene", "read_held_out", "scene_rng", "write_split",
]
