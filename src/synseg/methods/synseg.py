"""SynSeg itself as a method: a trained checkpoint's decoder on its frozen CLIP (synseg.models.synseg)."""
from __future__ import annotations

from synseg.methods.spec import MethodSpec, Preset, Sources
from synseg.models.synseg import SynSeg

# Threshold and prompts are the checkpoint's own (its config.json: background_threshold, templates).
PRESETS = {"default": Preset(logit_scale=None, background_threshold=None, templates=None)}


def build(sources: Sources, preset: Preset) -> SynSeg:
    return sources.model


METHOD = MethodSpec("synseg", "SynSeg", "caption-trained", PRESETS, build, needs_checkpoint=True)
