"""A synthetic world with exact ground truth, and a tiny CLIP trained on it, to test the method end to end offline."""
from __future__ import annotations

from synseg.synthetic.world import (
    CLASSES,
    COLOURS,
    SEEN_THINGS,
    PATTERNS,
    SILHOUETTES,
    SPLITS,
    STUFF,
    STUFF_NOUNS,
    THINGS,
    UNSEEN,
    UNSEEN_THINGS,
    Scene,
    Thing,
    make_scene,
    scene_rng,
    write_split,
)

__all__ = [
    "CLASSES", "COLOURS", "PATTERNS", "SEEN_THINGS", "SILHOUETTES", "SPLITS", "STUFF", "STUFF_NOUNS", "THINGS", "UNSEEN", "UNSEEN_THINGS",
    "Scene", "Thing", "make_scene", "scene_rng", "write_split",
]
