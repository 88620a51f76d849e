"""CLIPSeg (Lüddecke and Ecker, CVPR 2022) through Hugging Face transformers' CLIPSegForImageSegmentation: a decoder
trained on PhraseCut masks, conditioned on CLIP's text embedding, run once per (view, label) pair.

Weights: a preset names the published ones on the hub (CIDAS/clipseg-rd64-refined by default); `--pretrained` may
name a local folder written by `save_pretrained`, or 'none' for random weights with the dimensions of the chosen
open_clip backbone (speed measurements). Views are resized to the weights' own input size (352 px) and normalised as
their image processor says. Labels are embedded by CLIPSeg's own CLIP text tower, tokenised with open_clip's copy of
CLIP's BPE, and averaged over the preset's prompts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from synseg.encoding import EncodedViews
from synseg.errors import UserError
from synseg.methods.spec import MethodSpec, Preset, Sources
from synseg.models.backbone import ClipBackbone, quiet_hub


@dataclass(frozen=True, kw_only=True)
class CLIPSegPreset(Preset):
    """weights: the hub id of published CLIPSeg weights."""

    weights: str


def _preset(weights: str) -> CLIPSegPreset:
    # sigmoid probabilities below 0.4 become background (untuned, as SynSeg's default); one of CLIPSeg's training templates
    return CLIPSegPreset(background_threshold=0.4, templates=("a photo of a {}.",), weights=weights)


PRESETS = {"default": _preset("CIDAS/clipseg-rd64-refined"), "rd64": _preset("CIDAS/clipseg-rd64"),
           "rd16": _preset("CIDAS/clipseg-rd16")}


class CLIPSegInputs(nn.Module):
    """What protocols and the Segmenter ask a backbone for, answered for CLIPSeg: its input size, patch size and
    normalisation, and label embeddings from its own text tower (each label embedded once)."""

    def __init__(self, model: nn.Module, tokenizer, image_size: int, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self.image_size = image_size
        self.patch_size = int(model.config.vision_config.patch_size)
        self.embed_dim = int(model.config.projection_dim)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self._label_cache: dict[tuple[str, tuple[str, ...]], torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def normalize(self, images01: torch.Tensor) -> torch.Tensor:
        return (images01 - self.mean) / self.std

    @torch.no_grad()
    def embed_labels(self, labels: list[str], templates: tuple[str, ...]) -> torch.Tensor:
        """[N, projection_dim] CLIPSeg's conditional embeddings, the mean over `templates` of each label's."""
        templates = tuple(templates)
        missing = [label for label in dict.fromkeys(labels) if (label, templates) not in self._label_cache]
        if missing:
            prompts = [template.format(label) for label in missing for template in templates]
            output = self.model.clip.get_text_features(self.tokenizer(prompts).to(self.device))
            features = getattr(output, "pooler_output", output).float()  # transformers 5 returns an output object
            for label, embedding in zip(missing, features.view(len(missing), len(templates), -1).mean(dim=1).cpu()):
                self._label_cache[(label, templates)] = embedding
        return torch.stack([self._label_cache[(label, templates)] for label in labels]).to(self.device)


class CLIPSeg(nn.Module):
    """Dense predictor: sigmoid of CLIPSeg's logits, the image repeated once per label as CLIPSeg is used."""

    title = "CLIPSeg"

    def __init__(self, inputs: CLIPSegInputs, preset: CLIPSegPreset) -> None:
        super().__init__()
        self.backbone = inputs
        self.model = inputs.model.eval()
        self.model.clip.requires_grad_(False)  # CLIPSeg trains its decoder only; its CLIP is frozen
        self.background_threshold = preset.background_threshold
        self.templates = preset.templates

    @torch.inference_mode()
    def logits(self, views: EncodedViews, text: torch.Tensor) -> torch.Tensor:
        pixels = views.pixels
        count, classes = pixels.shape[0], text.shape[0]
        logits = self.model(pixel_values=pixels.repeat_interleave(classes, dim=0),
                            conditional_embeddings=text.repeat(count, 1)).logits
        logits = logits.reshape(count, classes, *logits.shape[-2:])
        if logits.shape[-2:] != pixels.shape[-2:]:
            logits = F.interpolate(logits, size=pixels.shape[-2:], mode="bilinear", align_corners=False)
        return logits

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)

    @torch.inference_mode()
    def activation_maps(self, views: EncodedViews, text: torch.Tensor) -> torch.Tensor:
        return self.activate(self.logits(views, text))


def clipseg_dims(backbone: ClipBackbone) -> dict:
    """CLIPSegConfig fields for CLIPSeg on an open_clip CLIP's dimensions (CLIPSegConfig's own default image tower is
    ViT-B/32); the decoder keeps CLIPSeg's defaults (reduce_dim 64, FFN 2048, 4 heads)."""
    architecture = backbone.config.architecture
    vision, text = architecture["vision_cfg"], architecture["text_cfg"]
    width = backbone.width
    return {
        "vision_config": {
            "hidden_size": width,
            "num_hidden_layers": int(vision["layers"]),
            "num_attention_heads": width // int(vision.get("head_width", 64)),
            "intermediate_size": int(width * float(vision.get("mlp_ratio", 4.0))),
            "image_size": backbone.image_size,
            "patch_size": backbone.patch_size,
        },
        "text_config": {
            "hidden_size": int(text["width"]),
            "num_hidden_layers": int(text["layers"]),
            "num_attention_heads": int(text["heads"]),
            "intermediate_size": 4 * int(text["width"]),
            "max_position_embeddings": int(text.get("context_length", 77)),
            "vocab_size": int(text.get("vocab_size", 49408)),
        },
        "projection_dim": backbone.embed_dim,
        "extract_layers": list(backbone.layers),
    }


def build(sources: Sources, preset: CLIPSegPreset) -> CLIPSeg:
    """Published weights (the preset's hub id, or a local folder given as `pretrained`), or random weights on the
    sources' CLIP dimensions when `pretrained` is 'none'. Raises UserError without transformers or the weights."""
    try:
        from transformers import AutoImageProcessor, CLIPSegConfig, CLIPSegForImageSegmentation
    except ImportError:
        raise UserError("CLIPSeg needs transformers: pip install 'synseg[clipseg]'") from None
    if sources.pretrained is not None and sources.pretrained.lower() == "none":
        clip = sources.clip
        model = CLIPSegForImageSegmentation(CLIPSegConfig(**clipseg_dims(clip)))
        inputs = CLIPSegInputs(model, clip.tokenizer, clip.image_size, clip.mean.flatten().tolist(),
                               clip.std.flatten().tolist())
        return CLIPSeg(inputs.to(sources.device), preset)
    weights = sources.pretrained if sources.pretrained and Path(sources.pretrained).is_dir() else preset.weights
    try:
        with quiet_hub():
            model = CLIPSegForImageSegmentation.from_pretrained(weights)
            processor = AutoImageProcessor.from_pretrained(weights)
    except OSError as error:
        reason = " ".join(str(error).split()).split(". ")[0][:160]
        raise UserError(f"could not load CLIPSeg weights {weights} ({reason}); where there "
                        "is no network, download them elsewhere (hf download) and pass the folder: --pretrained DIR") from None
    size = processor.size
    image_size = int(size if isinstance(size, int) else size["height"])
    tokenizer = open_clip.get_tokenizer("ViT-B-16", context_length=model.config.text_config.max_position_embeddings)
    inputs = CLIPSegInputs(model, tokenizer, image_size, list(processor.image_mean),
                           list(processor.image_std))
    return CLIPSeg(inputs.to(sources.device), preset)


METHOD = MethodSpec("clipseg", "CLIPSeg", "mask-trained", PRESETS, build)
