"""Frozen CLIP encoders from open_clip: residual-stream tokens of chosen blocks, and L2-normalised text embeddings."""
from __future__ import annotations

import contextlib
import logging
import math
import socket
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from synseg.config import check, read_json
from synseg.errors import UserError
from synseg.models import fastpath

ARCHITECTURES_DIR = Path(__file__).with_name("architectures")
open_clip.add_model_config(ARCHITECTURES_DIR)


@dataclass
class BackboneConfig:
    """Which CLIP to use. `pretrained`: an open_clip tag, a local weights file, or None for random weights."""

    name: str = "ViT-B-16"
    pretrained: str | None = "openai"
    layers: tuple[int, ...] | None = None
    architecture: dict | None = None

    def __post_init__(self) -> None:
        if self.pretrained is not None and self.pretrained.lower() == "none":
            self.pretrained = None
        if self.layers is not None:
            self.layers = tuple(int(i) for i in self.layers)
            check("layers", self.layers, len(self.layers) > 0 and min(self.layers) >= 0, "a non-empty list of block indices")


def default_layers(depth: int) -> tuple[int, ...]:
    """CLIPSeg's blocks 3, 6, 9 of 12, scaled to other depths."""
    return tuple(sorted({max(0, depth // 4), depth // 2, min(depth - 1, 3 * depth // 4)}))


def resolve_architecture(config: BackboneConfig) -> BackboneConfig:
    """Register the architecture with open_clip (a built-in name, a JSON file, or the dict a checkpoint carried)."""
    name = config.name
    if name.endswith(".json"):
        path = Path(name)
        architecture = read_json(path, "backbone architecture file")
        missing = [key for key in ("embed_dim", "vision_cfg", "text_cfg") if not isinstance(architecture.get(key), (int, dict))]
        if missing:
            raise UserError(f"{path} is not an open_clip architecture: it lacks {', '.join(missing)}")
        name = path.stem
        open_clip.factory._MODEL_CONFIGS[name] = architecture
    elif open_clip.get_model_config(name) is None and config.architecture is not None:
        open_clip.factory._MODEL_CONFIGS[name] = config.architecture  # open_clip's registry has no public dict setter
    architecture = open_clip.get_model_config(name)
    if architecture is None:
        known = ", ".join(m for m in open_clip.list_models() if m.startswith(("ViT-B", "synseg")))
        raise UserError(f"unknown backbone '{config.name}' (open_clip model names such as {known}, or a .json architecture file)")
    if "timm_model_name" in architecture.get("vision_cfg", {}):
        raise UserError(f"backbone '{name}' has a timm image tower; synseg needs open_clip's VisionTransformer")
    return BackboneConfig(name=name, pretrained=config.pretrained, layers=config.layers, architecture=architecture)


def create_clip(config: BackboneConfig) -> nn.Module:
    """Build the open_clip model and load its weights, turning download and file problems into one-line errors."""
    pretrained = config.pretrained
    quick_gelu = bool(config.architecture.get("quick_gelu", False))
    if pretrained is not None:
        tag_cfg = open_clip.get_pretrained_cfg(config.name, pretrained)
        if tag_cfg:
            quick_gelu = quick_gelu or bool(tag_cfg.get("quick_gelu", False))
        elif not Path(pretrained).is_file():
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(config.name)) or "none known"
            raise UserError(
                f"--pretrained '{pretrained}' is neither an existing file nor a tag of {config.name} (tags: {tags})"
            )
    if pretrained is not None and Path(pretrained).is_file():
        with quiet_hub():  # open_clip warns that it loaded no weights: they come next
            model = open_clip.create_model(config.name, pretrained=None, force_quick_gelu=quick_gelu)
        load_clip_file(model, Path(pretrained), config.name)
        return model
    try:
        with quiet_hub():
            return open_clip.create_model(config.name, pretrained=pretrained, force_quick_gelu=quick_gelu)
    except RuntimeError as error:
        if "download" in str(error).lower():
            raise UserError(
                f"could not fetch the '{pretrained}' weights of {config.name} (no network?); download them where there is "
                f"network and pass the file: --pretrained /path/to/open_clip_model.safetensors"
            ) from None
        raise UserError(f"could not load CLIP weights '{pretrained}' into {config.name}: {error}") from None


def load_clip_file(model: nn.Module, path: Path, name: str) -> None:
    """Load a local CLIP weights file as open_clip does (safetensors, or a torch pickle read with weights_only). The
    file is the user's: whatever it holds (garbage, a damaged header, another model's tensors) fails in one line."""
    try:
        open_clip.load_checkpoint(model, str(path))
    except Exception as error:  # safetensors, pickle, zip and open_clip's own conversions each fail their own way
        detail = " ".join(str(error).split()).split(". ")[0][:160]
        raise UserError(f"--pretrained {path} is not CLIP weights for {name} ({error.__class__.__name__}: "
                        f"{detail})") from None


@contextlib.contextmanager
def quiet_hub():
    """Silence open_clip/hub logging and, when the hub is unreachable, use only the local cache (no minute of retries)."""
    import huggingface_hub.constants as hub

    root = logging.getLogger()
    level, offline = root.level, hub.HF_HUB_OFFLINE
    root.setLevel(logging.CRITICAL)
    logging.getLogger("huggingface_hub").setLevel(logging.CRITICAL)
    try:
        socket.getaddrinfo("huggingface.co", 443)
    except OSError:
        hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        root.setLevel(level)
        hub.HF_HUB_OFFLINE = offline


def resized_positions(positions: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[1 + n*n, width] class + square-grid position embeddings -> [1 + h*w, width] for an h x w token grid, resized
    bicubically as the reference implementations do (DINO's convention: `scale_factor` (grid + 0.1) / n, so that
    rounding never loses a row)."""
    side = math.isqrt(positions.shape[0] - 1)
    patches = positions[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    scale = ((grid[0] + 0.1) / side, (grid[1] + 0.1) / side)
    patches = F.interpolate(patches, scale_factor=scale, mode="bicubic", align_corners=False, recompute_scale_factor=False)
    return torch.cat([positions[:1], patches.flatten(2).transpose(1, 2)[0]])


def block_inputs(visual: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The tokens [B, 1 + HW, width] entering each block of the image tower on embeddings `x` (batch first)."""
    transformer = visual.transformer
    inputs = []
    for block in transformer.resblocks:
        inputs.append(x)
        x = block(x) if transformer.batch_first else block(x.transpose(0, 1)).transpose(0, 1)
    return inputs


class ClipBackbone(nn.Module):
    """A frozen open_clip model exposing what SynSeg needs: intermediate visual tokens and text embeddings."""

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.config = resolve_architecture(config)
        self.clip = create_clip(self.config)
        visual = self.clip.visual
        if not hasattr(visual, "forward_intermediates") or not hasattr(visual, "transformer"):
            raise UserError(f"backbone '{self.config.name}' has no ViT image tower")
        depth = len(visual.transformer.resblocks)
        self.layers = self.config.layers or default_layers(depth)
        self.config.layers = self.layers
        if max(self.layers) >= depth or min(self.layers) < 0:
            raise UserError(f"layers {self.layers} do not exist in a {depth}-block image tower")
        self.plain_blocks = hasattr(visual, "_embeds") and all(
            fastpath.is_plain_clip_block(block) for block in visual.transformer.resblocks)
        self.image_size = int(visual.image_size[0] if isinstance(visual.image_size, tuple) else visual.image_size)
        self.patch_size = int(visual.patch_size[0])
        self.grid = (self.image_size // self.patch_size, self.image_size // self.patch_size)
        self.width = int(visual.transformer.width)
        self.embed_dim = int(self.clip.text_projection.shape[-1] if hasattr(self.clip, "text_projection") else visual.output_dim)
        mean = getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
        std = getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.tokenizer = open_clip.get_tokenizer(self.config.name)
        self.requires_grad_(False)
        self.eval()
        self._label_cache: dict[tuple[str, tuple[str, ...]], torch.Tensor] = {}

    def train(self, mode: bool = True) -> "ClipBackbone":
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def normalize(self, images01: torch.Tensor) -> torch.Tensor:
        """CLIP's own mean/std normalisation of [0, 1] images."""
        return (images01 - self.mean) / self.std

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] normalised pixels, H and W multiples of the patch size -> [B, 1 + HW/p^2, width]: patch, class
        and position embeddings and ln_pre. At another grid than CLIP's own the position embeddings are resized
        (`resized_positions`). Raises ValueError for a size that is not a multiple of the patch size."""
        visual, patch = self.clip.visual, self.patch_size
        height, width = pixels.shape[-2:]
        if height % patch or width % patch:
            raise ValueError(f"input {width}x{height} is not a multiple of the patch size {patch}")
        grid = (height // patch, width // patch)
        if grid == self.grid:
            return visual._embeds(pixels)
        x = visual.conv1(pixels).flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + resized_positions(visual.positional_embedding, grid).to(x.dtype)
        return visual.ln_pre(visual.patch_dropout(x))

    @torch.no_grad()
    def hidden_states(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """The tokens [B, 1 + HW, width] entering each block of the image tower (batch first), at any input size that
        is a multiple of the patch size: [0] after ln_pre, [-1] entering the last block. The training-free methods
        start from these (plain open_clip blocks, not `encode_image`'s fast path)."""
        return block_inputs(self.clip.visual, self.embed(pixels))

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor, layers: tuple[int, ...] | None = None) -> list[torch.Tensor]:
        """Residual-stream tokens [B, 1 + HW, width] (CLS first, before ln_post) after each of `layers` (default: the
        configured ones); layer -1 is the embeddings entering block 0."""
        layers = self.layers if layers is None else tuple(layers)
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            pixels = F.interpolate(pixels, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        if self.plain_blocks and (torch.is_inference_mode_enabled() or -1 in layers):
            return self._encode_blocks(pixels, layers)
        out = self.clip.visual.forward_intermediates(
            pixels, indices=list(layers), stop_early=True, intermediates_only=True,
            output_fmt="NLC", output_extra_tokens=True,
        )
        return [torch.cat([cls, patches], dim=1) for cls, patches in zip(out["image_intermediates_prefix"], out["image_intermediates"])]

    def _encode_blocks(self, pixels: torch.Tensor, layers: tuple[int, ...]) -> list[torch.Tensor]:
        """What forward_intermediates returns, through `fastpath.clip_block`: products on oneDNN for CPU fp32 inference,
        fused attention, and no nn.MultiheadAttention (whose CPU-autocast path copies its weight once per token)."""
        visual = self.clip.visual
        x = visual._embeds(pixels)  # patch, class and position embeddings, ln_pre
        tokens = {-1: x} if -1 in layers else {}
        for index, block in enumerate(visual.transformer.resblocks[: max(layers) + 1]):
            x = fastpath.clip_block(block, x)
            if index in layers:
                tokens[index] = x
        return [tokens[index] for index in layers]

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised CLIP text embeddings [N, embed_dim]."""
        tokens = self.tokenizer(texts).to(self.device)
        return F.normalize(self.clip.encode_text(tokens).float(), dim=-1)

    @torch.no_grad()
    def embed_texts(self, labels: list[str], templates: tuple[str, ...]) -> torch.Tensor:
        """Prompt-ensemble embedding per label (mean over templates, re-normalised), computed now, in one batch."""
        prompts = [template.format(label) for label in labels for template in templates]
        embeddings = self.encode_text(prompts).view(len(labels), len(templates), -1).mean(dim=1)
        return F.normalize(embeddings, dim=-1)

    @torch.no_grad()
    def embed_labels(self, labels: list[str], templates: tuple[str, ...]) -> torch.Tensor:
        """`embed_texts`, each label embedded once: inference asks about the same class list image after image. The
        cache lives on the CPU and answers on the model's device, wherever the model has moved since."""
        templates = tuple(templates)
        missing = [label for label in dict.fromkeys(labels) if (label, templates) not in self._label_cache]
        if missing:
            for label, embedding in zip(missing, self.embed_texts(missing, templates).cpu()):
                self._label_cache[(label, templates)] = embedding
        return torch.stack([self._label_cache[(label, templates)] for label in labels]).to(self.device)
