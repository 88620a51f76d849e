"""The method registry: SynSeg and the training-free dense-CLIP methods, each known by one name to every command.

A training-free method is one file here (its last block and its presets) and one line in TRAINING_FREE. On the
command line a method is NAME or NAME:PRESET (e.g. sclip:voc), the preset naming one of its own published defaults.
"""
from __future__ import annotations

from dataclasses import dataclass

from synseg.errors import UserError
from synseg.methods import clearclip, maskclip, naclip, proxyclip, readout, resclip, scclip, sclip
from synseg.methods.base import Preset, TrainingFreeCLIP
from synseg.models.backbone import ClipBackbone

TRAINING_FREE: dict[str, tuple[type[TrainingFreeCLIP], dict[str, Preset]]] = {
    "maskclip": (maskclip.MaskCLIP, maskclip.PRESETS),
    "sclip": (sclip.SCLIP, sclip.PRESETS),
    "clearclip": (clearclip.ClearCLIP, clearclip.PRESETS),
    "naclip": (naclip.NACLIP, naclip.PRESETS),
    "resclip": (resclip.ResCLIP, resclip.PRESETS),
    "scclip": (scclip.SCCLIP, scclip.PRESETS),
    "proxyclip": (proxyclip.ProxyCLIP, proxyclip.PRESETS),
    "readout": (readout.CLSReadout, readout.PRESETS),
}
TRAINED = {"synseg": "SynSeg"}


def training_free_methods() -> tuple[str, ...]:
    """Names of the methods that need only CLIP weights (one row each in the synthetic-world experiment)."""
    return tuple(TRAINING_FREE)


def method_names() -> tuple[str, ...]:
    return (*TRAINED, *TRAINING_FREE)


@dataclass(frozen=True)
class MethodChoice:
    """A registered method and one of its presets, as written on the command line."""

    name: str
    preset: str = "default"

    @property
    def training_free(self) -> bool:
        return self.name in TRAINING_FREE

    @property
    def title(self) -> str:
        title = TRAINED.get(self.name) or TRAINING_FREE[self.name][0].title
        return title if self.preset == "default" else f"{title} ({self.preset})"

    def __str__(self) -> str:
        return self.name if self.preset == "default" else f"{self.name}:{self.preset}"


def parse_method(text: str) -> MethodChoice:
    """'sclip' or 'sclip:voc' -> MethodChoice; unknown names and presets are user errors that list the choices."""
    name, _, preset = text.strip().lower().partition(":")
    if name not in TRAINED and name not in TRAINING_FREE:
        raise UserError(f"unknown method '{name}' (choose from {', '.join(method_names())})")
    presets = TRAINING_FREE[name][1] if name in TRAINING_FREE else {"default": None}
    preset = preset or "default"
    if preset not in presets:
        raise UserError(f"unknown preset '{preset}' of {name} (choose from {', '.join(presets)})")
    return MethodChoice(name, preset)


def parse_methods(text: str) -> list[MethodChoice]:
    """A comma-separated list of methods, duplicates dropped."""
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise UserError("method must be a comma-separated list with no empty entries")
    return list(dict.fromkeys(parse_method(part) for part in parts))


def build_training_free(choice: MethodChoice | str, backbone: ClipBackbone) -> TrainingFreeCLIP:
    """A training-free method on an already loaded backbone (methods on one backbone share its weights)."""
    choice = parse_method(choice) if isinstance(choice, str) else choice
    if not choice.training_free:
        raise UserError(f"{choice.name} is not a training-free method ({', '.join(TRAINING_FREE)} are)")
    cls, presets = TRAINING_FREE[choice.name]
    return cls(backbone, presets[choice.preset])


__all__ = ["MethodChoice", "Preset", "TrainingFreeCLIP", "build_training_free", "method_names", "parse_method",
           "parse_methods", "training_free_methods"]
