"""SynSeg: frozen CLIP + FiLM + CLIPSeg-style decoder, with the Feature Synergy Structure used in training."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from synseg.config import check, check_templates, finite

from synseg.models.backbone import BackboneConfig, ClipBackbone
from synseg.models.decoder import DecoderConfig, DecoderOutput, SegDecoder
from synseg.errors import UserError
from synseg.models.fss import POOL_DIVISORS, Projector, masked_attention_pooling, synergy_vectors, token_activations

DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "a cropped photo of the {}.",
    "a bad photo of the {}.",
    "there is a {} in the scene.",
    "a photo of the {} in the scene.",
)
POOL_SOURCES = ("conditional", "unconditional", "backbone", "attention")
DECODE_CHUNK_BYTES = 12 << 20  # CPU inference: (view, class) pairs per decoder call sized so FFN activations fit in cache


@dataclass
class SynSegConfig:
    """Everything needed to rebuild a model; saved as config.json beside every checkpoint."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    background_threshold: float = 0.4
    # FSS pools Z_k (paper); "unconditional" decoder features; "backbone" frozen CLIP tokens; "attention": CLIP's own
    # class-token path with each map as its attention mask (models/fss.py), in CLIP's joint space without a projector
    pool_source: str = "conditional"
    pool_divisor: str = "activation"  # fg = A^T Z / sum A (paper); "tokens" divides by HW as CCAM does

    def __post_init__(self) -> None:
        check("pool_source", self.pool_source, self.pool_source in POOL_SOURCES, f"one of {POOL_SOURCES}")
        check("pool_divisor", self.pool_divisor, self.pool_divisor in POOL_DIVISORS, f"one of {POOL_DIVISORS}")
        finite("background_threshold", self.background_threshold, 0.0, 1.0)
        check_templates("templates", self.templates)


@dataclass
class SynergyOutput:
    logits: torch.Tensor  # [N, 1, S, S]
    foreground: torch.Tensor  # [P, E] projected fg synergy vectors of the first P pairs
    background: torch.Tensor  # [P, E] projected bg synergy vectors


class SynSeg(nn.Module):
    def __init__(self, config: SynSegConfig, backbone: ClipBackbone) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.decoder = SegDecoder(
            config.decoder, backbone.width, backbone.embed_dim, len(backbone.layers), backbone.grid, backbone.patch_size
        )
        depth = len(backbone.clip.visual.transformer.resblocks)
        if config.pool_source == "attention":
            if not backbone.plain_blocks or getattr(backbone.clip.visual, "proj", None) is None:
                raise UserError(f"pool_source 'attention' needs a plain open_clip ViT with a projection; backbone "
                                f"'{backbone.config.name}' is not one")
            self.feature_layers = tuple(sorted(set(backbone.layers) | set(range(-1, depth - 1))))
        else:
            pooled_dim = backbone.width if config.pool_source == "backbone" else config.decoder.reduce_dim
            self.projector = Projector(pooled_dim, backbone.embed_dim, config.decoder.projector_hidden)
            self.feature_layers = tuple(backbone.layers)

    @property
    def background_threshold(self) -> float:
        return self.config.background_threshold

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what training changes: FiLM, decoder, projector. The backbone is named by the config instead."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def decode(self, layer_tokens: list[torch.Tensor], text: torch.Tensor, image_index: torch.Tensor) -> DecoderOutput:
        """Decode N (image, category) pairs: layer_tokens of B images, text [N, E], image_index [N] into 0..B-1."""
        tokens = self.decoder(self.decoder.reduce(layer_tokens), image_index, text)
        return DecoderOutput(self.decoder.to_logits(tokens), tokens[:, 1:])

    def forward(
        self, layer_tokens: list[torch.Tensor], text: torch.Tensor, image_index: torch.Tensor, pooled: int | None = None
    ) -> SynergyOutput:
        """Training pass on the tokens of `feature_layers`: activation maps of every pair, plus the FSS fg/bg vectors,
        in CLIP space, of the first `pooled` pairs (default all; pairs the loss only reads maps of need no pooling)."""
        by_layer = dict(zip(self.feature_layers, layer_tokens))
        layer_tokens = [by_layer[layer] for layer in self.backbone.layers]
        reduced = self.decoder.reduce(layer_tokens)
        tokens = self.decoder(reduced, image_index, text)
        logits = self.decoder.to_logits(tokens)
        pooled_index = image_index[:pooled]
        if self.config.pool_source == "attention":
            visual = self.backbone.clip.visual
            activations = token_activations(logits[:pooled], self.backbone.patch_size)
            block_inputs = [by_layer[layer] for layer in range(-1, len(visual.transformer.resblocks) - 1)]
            both = masked_attention_pooling(visual.transformer.resblocks, block_inputs,
                                            torch.cat([activations, 1.0 - activations]), pooled_index.repeat(2))
            fg, bg = (visual.ln_post(both) @ visual.proj).chunk(2)
            return SynergyOutput(logits, fg, bg)
        if self.config.pool_source == "backbone":
            features = layer_tokens[-1][:, 1:][pooled_index]
        elif self.config.pool_source == "unconditional":
            features = self.decoder(reduced, torch.arange(len(layer_tokens[0]), device=text.device), None)[:, 1:].index_select(0, pooled_index)
        else:
            features = tokens[:pooled, 1:]
        activations = token_activations(logits[:pooled], self.backbone.patch_size)
        fg, bg = synergy_vectors(activations, features, self.config.pool_divisor)
        return SynergyOutput(logits, self.projector(fg), self.projector(bg))

    @torch.inference_mode()
    def activation_maps(self, pixels: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """[V, K, S, S] activations in [0, 1] for V normalised views and K text embeddings."""
        return self._maps(pixels, text, activate=True)

    @torch.inference_mode()
    def logits(self, pixels: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """[V, K, S, S] decoder logits (what the slide protocol averages across windows), at the views' size."""
        return self._maps(pixels, text, activate=False)

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)

    def _maps(self, pixels: torch.Tensor, text: torch.Tensor, activate: bool) -> torch.Tensor:
        """CLIP and the decoder's reductions run once per view; the decoder then runs per (view, class) pair, on CPU in
        chunks small enough for its FFN activations to stay in cache (twice as fast as one big batch)."""
        views, classes = pixels.shape[0], text.shape[0]
        reduced = self.decoder.reduce(self.backbone.encode_image(pixels))
        image_index = torch.arange(views, device=pixels.device).repeat_interleave(classes)
        text = text.repeat(views, 1)
        pairs, tokens = views * classes, reduced[0].shape[1]
        chunk = pairs if pixels.device.type != "cpu" else max(1, DECODE_CHUNK_BYTES // (tokens * self.config.decoder.ffn_dim * 4))
        maps = None
        for start in range(0, pairs, chunk):
            part = slice(start, start + chunk)
            logits = self.decoder.to_logits(self.decoder(reduced, image_index[part], text[part]))
            if maps is None:
                maps = logits.new_empty(pairs, *logits.shape[1:])
            if activate:
                torch.sigmoid(logits, out=maps[part])
            else:
                maps[part] = logits
        maps = maps.view(views, classes, *maps.shape[-2:])
        if maps.shape[-2:] != pixels.shape[-2:]:
            maps = F.interpolate(maps, size=pixels.shape[-2:], mode="bilinear", align_corners=False)
        return maps


def build_synseg(config: SynSegConfig) -> SynSeg:
    """The one entry point: backbone from its config, trainable parts freshly initialised."""
    backbone = ClipBackbone(config.backbone)
    config.backbone = backbone.config
    return SynSeg(config, backbone)
