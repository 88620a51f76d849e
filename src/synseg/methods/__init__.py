"""The method registry: every predictor synseg can run, each known by one name to the library and every command.

A method is one file in this folder ending in a `METHOD = MethodSpec(...)` (a training-free one:
`training_free(name, cls, PRESETS)`) and one entry in REGISTRY below. On the command line a method is NAME or
NAME:PRESET (e.g. sclip:voc), the preset naming one of its own published defaults, and either may end in +verify:
its maps checked region by region by CLIP's class token (`verify.py`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from synseg.errors import UserError
from synseg.methods import clearclip, clipseg, maskclip, naclip, proxyclip, readout, resclip, scclip, sclip, synseg
from synseg.methods.spec import DensePredictor, MethodSpec, Preset, Sources, resolve_device
from synseg.methods.verify import SUFFIX, RegionVerified

REGISTRY: dict[str, MethodSpec] = {spec.name: spec for spec in (
    synseg.METHOD,
    clipseg.METHOD,
    maskclip.METHOD,
    sclip.METHOD,
    clearclip.METHOD,
    naclip.METHOD,
    resclip.METHOD,
    scclip.METHOD,
    proxyclip.METHOD,
    readout.METHOD,
)}


def list_methods(kind: str | None = None) -> list[str]:
    """Every registered method's name in the registry's order, or those of one kind (spec.KINDS)."""
    return [name for name, spec in REGISTRY.items() if kind is None or spec.kind == kind]


@dataclass(frozen=True)
class MethodChoice:
    """A registered method and one of its presets, as written on the command line."""

    name: str
    preset: str = "default"
    verify: bool = False  # wrapped in RegionVerified

    @property
    def spec(self) -> MethodSpec:
        return REGISTRY[self.name]

    @property
    def title(self) -> str:
        title = self.spec.title if self.preset == "default" else f"{self.spec.title} ({self.preset})"
        return title + (" + region verification" if self.verify else "")

    def __str__(self) -> str:
        return (self.name if self.preset == "default" else f"{self.name}:{self.preset}") + (SUFFIX if self.verify else "")


def showcase_methods(trained: bool = True) -> list[str]:
    """What the demo and the app put side by side: SynSeg (when there is a trained model) with and without region
    verification, and every training-free method, the CLS readout also verified. Build them with `distinct=True`:
    of "synseg:unverified" and "synseg+verify" one is the checkpoint's own "synseg"."""
    return ((["synseg", "synseg:unverified", f"synseg{SUFFIX}"] if trained else []) + list_methods("training-free")
            + [f"readout{SUFFIX}"])


def parse_method(text: str | MethodChoice) -> MethodChoice:
    """'sclip', 'sclip:voc' or 'sclip:voc+verify' -> MethodChoice; unknown names and presets raise UserError listing
    the choices."""
    if isinstance(text, MethodChoice):
        return text
    text = text.strip().lower()
    verify = text.endswith(SUFFIX)
    name, _, preset = text.removesuffix(SUFFIX).partition(":")
    if name not in REGISTRY:
        raise UserError(f"unknown method '{name}' (choose from {', '.join(REGISTRY)})")
    presets = REGISTRY[name].presets
    preset = preset or "default"
    if preset not in presets:
        raise UserError(f"unknown preset '{preset}' of {name} (choose from {', '.join(presets)})")
    return MethodChoice(name, preset, verify)


def parse_methods(text: str) -> list[MethodChoice]:
    """A comma-separated list of methods, duplicates dropped."""
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise UserError("method must be a comma-separated list with no empty entries")
    return list(dict.fromkeys(parse_method(part) for part in parts))


def build_predictors(methods: list[str | MethodChoice], checkpoint: str | None = None, backbone: str | None = None,
                     pretrained: str | None = None, device: str | torch.device = "auto",
                     allow_untrained: bool = False, distinct: bool = False) -> dict[MethodChoice, DensePredictor]:
    """One predictor per method (NAME or NAME:PRESET), in eval mode on `device`, all built from one `Sources`: the
    methods on CLIP share one backbone (the checkpoint's, when there is one). A method that needs a checkpoint and has
    none raises UserError unless `allow_untrained` (an untrained decoder: speed and smoke tests). Choices that come to
    the same predictor (`synseg+verify` of a checkpoint that verifies) share it; `distinct` keeps only the first."""
    choices = [parse_method(method) for method in methods]
    sources = Sources(checkpoint, backbone, pretrained, device, allow_untrained)
    missing = [c for c in choices if c.spec.needs_checkpoint and not checkpoint and not allow_untrained]
    if missing:
        raise UserError(f"--method {missing[0]} needs a trained checkpoint (--checkpoint)")
    if any(c.spec.needs_checkpoint for c in choices):
        sources.model  # noqa: B018  (built first, so the methods on CLIP share its backbone)
    built: dict[tuple[str, str, bool], DensePredictor] = {}
    predictors = {}
    for choice in choices:
        plain = (choice.name, choice.preset, False)
        if plain not in built:
            built[plain] = choice.spec.build(sources, choice.spec.presets[choice.preset])
        key = (choice.name, choice.preset, choice.verify and not isinstance(built[plain], RegionVerified))
        if key not in built:
            try:
                built[key] = RegionVerified(built[plain])
            except ValueError as error:
                raise UserError(f"--method {choice}: {error}") from None
        if not (distinct and any(built[key] is other for other in predictors.values())):
            predictors[choice] = built[key]
    return predictors


def build_predictor(method: str | MethodChoice, checkpoint: str | None = None, backbone: str | None = None,
                    pretrained: str | None = None, device: str | torch.device = "auto",
                    allow_untrained: bool = False) -> DensePredictor:
    """One method's predictor; see `build_predictors`."""
    (predictor,) = build_predictors([method], checkpoint, backbone, pretrained, device, allow_untrained).values()
    return predictor


__all__ = ["REGISTRY", "DensePredictor", "MethodChoice", "MethodSpec", "Preset", "Sources", "build_predictor",
           "build_predictors", "list_methods", "parse_method", "parse_methods", "resolve_device", "RegionVerified",
           "showcase_methods"]
