"""synseg: open-vocabulary semantic segmentation (SynSeg) on frozen open_clip encoders.

    import synseg
    segmenter = synseg.Segmenter(synseg.build_predictor("synseg", checkpoint="runs/cc12m/final"))
    result = segmenter.segment("room.jpg", ["cat", "sofa", "rug"])

`synseg.list_methods()` names every method `build_predictor` builds (SynSeg, CLIPSeg and the training-free
dense-CLIP methods); `ImageEncoding` encodes an image once for several Segmenters. The names below are imported on
first use, so that `import synseg` (and the `synseg` command) starts without loading torch.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "list_methods": "synseg.methods",
    "build_predictor": "synseg.methods",
    "build_predictors": "synseg.methods",
    "Segmenter": "synseg.predictor",
    "Segmentation": "synseg.predictor",
    "ImageEncoding": "synseg.encoding",
    "build_protocol": "synseg.protocols",
    "load_model": "synseg.checkpoint",
    "save_model": "synseg.checkpoint",
    "build_synseg": "synseg.models",
    "SynSegConfig": "synseg.models",
    "load_image": "synseg.io",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'synseg' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
