"""The methods `synseg bench` times: SynSeg, HF CLIPSeg and the training-free methods, on one backbone."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from synseg.errors import UserError
from synseg.methods import build_training_free, training_free_methods
from synseg.models.backbone import ClipBackbone
from synseg.models.synseg import SynSeg
from synseg.research.speed.flops import count_flops

METHODS = ("synseg", "clipseg", *training_free_methods())


@dataclass
class Method:
    """A dense predictor and what the table says about it."""

    name: str
    predictor: nn.Module
    total_params: int
    trainable_params: int
    weight_bytes: int
    flops_per_view: float = 0.0  # class-independent work per view (the image encoder)
    flops_per_pair: float = 0.0  # work per view and class (SynSeg: the decoder; CLIPSeg: a whole pass)

    def flops(self, views: int, classes: int) -> float:
        """Matmul FLOPs of one call on `views` views and `classes` classes."""
        return views * (self.flops_per_view + classes * self.flops_per_pair)


class CLIPSegPeer(nn.Module):
    """HF transformers' CLIPSegForImageSegmentation as a dense predictor, used as HF's CLIPSeg is used: the image is
    repeated once per prompt. Its conditional embeddings are the same cached prompt-ensemble text embeddings SynSeg
    gets, so neither method pays for text."""

    def __init__(self, backbone: ClipBackbone) -> None:
        super().__init__()
        try:
            from transformers import CLIPSegConfig, CLIPSegForImageSegmentation
        except ImportError:
            raise UserError("the clipseg peer needs transformers: pip install 'synseg[bench]' (or leave clipseg out of "
                            "--method)") from None
        self.backbone = backbone
        self.background_threshold = 0.4
        self.model = CLIPSegForImageSegmentation(CLIPSegConfig(**clipseg_dims(backbone))).eval()

    @torch.inference_mode()
    def activation_maps(self, pixels: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """[V, 3, S, S] views and [K, D] text embeddings -> [V, K, h, w] probabilities."""
        views, classes = pixels.shape[0], text.shape[0]
        logits = self.model(pixel_values=pixels.repeat_interleave(classes, dim=0),
                            conditional_embeddings=text.repeat(views, 1)).logits
        return torch.sigmoid(logits.reshape(views, classes, *logits.shape[-2:]))


def clipseg_dims(backbone: ClipBackbone) -> dict:
    """CLIPSeg on the same CLIP as ours (CLIPSegConfig's own default image tower is ViT-B/32), decoder left at
    CLIPSeg's defaults (reduce_dim 64, FFN 2048, 4 heads: the same as SynSeg's)."""
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


def build_methods(model: SynSeg, names: tuple[str, ...]) -> list[Method]:
    """SynSeg and the peers on the same backbone, with parameter counts and FLOPs per view and per (view, class)."""
    device = model.backbone.device
    methods = []
    for name in names:
        if name == "synseg":
            predictor, own = model, list(model.parameters())
            trainable = sum(p.numel() for p in own if p.requires_grad)
        elif name in training_free_methods():
            predictor, trainable = build_training_free(name, model.backbone), 0
            own = list(predictor.parameters())
        elif name == "clipseg":
            predictor = CLIPSegPeer(model.backbone).to(device)
            own = list(predictor.model.parameters())  # the shared backbone only supplies the cached text embeddings
            trainable = sum(p.numel() for p in predictor.model.decoder.parameters())  # CLIPSeg trains its decoder only
        else:
            raise UserError(f"unknown method '{name}' (choose from {', '.join(METHODS)})")
        method = Method(name, predictor, sum(p.numel() for p in own), trainable,
                        sum(p.numel() * p.element_size() for p in own))
        one, two = count_flops(predictor, 1, 1), count_flops(predictor, 1, 2)
        method.flops_per_view, method.flops_per_pair = 2 * one - two, two - one
        methods.append(method)
    return methods
