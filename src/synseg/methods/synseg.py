"""SynSeg itself as a method: a trained checkpoint's decoder on its frozen CLIP (synseg.models.synseg)."""
from __future__ import annotations

from synseg.methods.spec import DensePredictor, MethodSpec, Preset, Sources
from synseg.methods.verify import RegionVerified

# Threshold, prompts and region verification are the checkpoint's own (its config.json: background_threshold,
# templates, verify); "unverified" reads the decoder's maps alone, whatever the checkpoint says.
PRESETS = {"default": Preset(logit_scale=None, background_threshold=None, templates=None),
           "unverified": Preset(logit_scale=None, background_threshold=None, templates=None, verify=False)}


def build(sources: Sources, preset: Preset) -> DensePredictor:
    model = sources.model
    verify = model.config.verify if preset.verify is None else preset.verify
    return RegionVerified(model) if verify else model


METHOD = MethodSpec("synseg", "SynSeg", "caption-trained", PRESETS, build, needs_checkpoint=True)
