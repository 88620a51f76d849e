"""What a method is to the rest of synseg: a dense predictor (the contract protocols and the Segmenter rely on) and a
registry entry that builds one from plain arguments."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Callable, Mapping, Protocol

import torch
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from synseg.errors import UserError

if TYPE_CHECKING:
    from synseg.encoding import EncodedViews
    from synseg.models.backbone import ClipBackbone
    from synseg.models.synseg import SynSeg

# The 80 prompts of CLIP's ImageNet zero-shot evaluation, which SCLIP, ClearCLIP and NACLIP average over.
IMAGENET_TEMPLATES = tuple(template("{}") for template in OPENAI_IMAGENET_TEMPLATES)
KINDS = ("caption-trained", "mask-trained", "training-free")


class DensePredictor(Protocol):
    """What protocols and the Segmenter need from a method.

    `backbone` gives the views' size, patch size, normalisation and device, and embeds labels (`embed_labels`).
    `logits` are the scores a protocol may average across windows, `activate` turns them into probabilities, and
    `activation_maps` is the two in one. Both take a batch of views and [K, E] label embeddings and return
    [V, K, h, w] at the views' size."""

    backbone: ClipBackbone
    background_threshold: float
    templates: tuple[str, ...]

    def logits(self, views: EncodedViews, text: torch.Tensor) -> torch.Tensor: ...

    def activate(self, logits: torch.Tensor) -> torch.Tensor: ...

    def activation_maps(self, views: EncodedViews, text: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class Preset:
    """A method's published defaults. None means the model's own: logit_scale, CLIP's trained temperature (100 for
    OpenAI's weights); background_threshold and templates, a checkpoint's config (SynSeg) or synseg's 8 prompts;
    verify (region verification, methods/verify.py), a checkpoint's config (SynSeg), else off."""

    logit_scale: float | None = None
    background_threshold: float | None = None
    templates: tuple[str, ...] | None = IMAGENET_TEMPLATES
    verify: bool | None = None


def resolve_device(name: str | torch.device) -> torch.device:
    """`auto`: the GPU, else the CPU. Under torchrun, `synseg.distributed.place` makes cuda:LOCAL_RANK the current
    GPU, the one that `cuda` then names. Raises UserError for an unknown device or CUDA without a GPU."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name} asked for, but no CUDA GPU is available")
    return device


class Sources:
    """Where methods get their weights, each loaded once and shared by every method built from it: a SynSeg checkpoint
    (folder, weights file or hub id) and one CLIP backbone (`backbone`, `pretrained`: an open_clip name or .json and
    a tag, a local weights file or 'none'; or an already built ClipBackbone). When a checkpoint is given, its backbone
    is the CLIP every method uses."""

    def __init__(self, checkpoint: str | None = None, backbone: str | ClipBackbone | None = None,
                 pretrained: str | None = None, device: str | torch.device = "auto", allow_untrained: bool = False) -> None:
        from synseg.models.backbone import ClipBackbone

        self.built = backbone if isinstance(backbone, ClipBackbone) else None
        if self.built is not None and checkpoint:
            raise UserError("a checkpoint brings its own backbone: give a backbone name, not a built backbone")
        self.checkpoint, self.pretrained = checkpoint, pretrained
        self.backbone_name = self.built.config.name if self.built is not None else backbone
        self.device = self.built.device if self.built is not None and str(device) == "auto" else resolve_device(device)
        self.allow_untrained = allow_untrained

    @cached_property
    def model(self) -> SynSeg:
        """The checkpoint's model; without one (when allowed), an untrained decoder on the chosen backbone."""
        from synseg.checkpoint import load_config, load_weights
        from synseg.models import BackboneConfig, SynSegConfig, build_synseg
        from synseg.models.synseg import SynSeg

        if self.checkpoint:
            config = load_config(self.checkpoint)
            if self.backbone_name and self.backbone_name != config.backbone.name:
                raise UserError(f"backbone {self.backbone_name} differs from the checkpoint's backbone {config.backbone.name}")
        elif not self.allow_untrained:
            raise UserError("SynSeg needs a trained checkpoint (--checkpoint)")
        else:
            config = SynSegConfig(backbone=BackboneConfig(name=self.backbone_name or "ViT-B-16"))
        if self.pretrained is not None:
            config.backbone.pretrained = self.pretrained
        if self.built is not None:
            config.backbone = self.built.config
            return SynSeg(config, self.built).to(self.device).eval()
        model = build_synseg(config)
        if self.checkpoint:
            load_weights(model, self.checkpoint)
        return model.to(self.device).eval()

    @cached_property
    def clip(self) -> ClipBackbone:
        """The SynSeg checkpoint's backbone when there is a checkpoint, else CLIP from `backbone` / `pretrained`
        (default ViT-B-16 with OpenAI's weights)."""
        from synseg.models import BackboneConfig
        from synseg.models.backbone import ClipBackbone

        if self.built is not None:
            return self.built
        if self.checkpoint or "model" in self.__dict__:
            return self.model.backbone
        config = BackboneConfig(name=self.backbone_name or "ViT-B-16", pretrained=self.pretrained or "openai")
        return ClipBackbone(config).to(self.device)


@dataclass(frozen=True)
class MethodSpec:
    """A registry entry. `build` makes the predictor of one preset from the shared sources; `needs_checkpoint`: it
    has no meaning without a trained SynSeg checkpoint; `kind`: one of KINDS."""

    name: str
    title: str
    kind: str
    presets: Mapping[str, Preset]
    build: Callable[[Sources, Preset], DensePredictor]
    needs_checkpoint: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS or "default" not in self.presets:
            raise ValueError(f"method {self.name}: kind must be one of {KINDS} and presets must hold 'default'")

    @property
    def training_free(self) -> bool:
        return self.kind == "training-free"
