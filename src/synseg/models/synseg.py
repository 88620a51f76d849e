"""SynSeg: frozen CLIP + FiLM + CLIPSeg-style decoder, with the Feature Synergy Structure used in training."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from synseg.config import check, check_templates, finite
from synseg.encoding import EncodedViews
from synseg.models.backbone import BackboneConfig, ClipBackbone
from synseg.models.decoder import DecoderConfig, DecoderOutput, SegDecoder
from synseg.errors import UserError
from synseg.models.fss import POOL_DIVISORS, Projector, masked_attention_pooling, synergy_vectors, token_activations
from synseg.models.readout import ReadoutGrouping, per_image_max, readout_embeddings

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
PRIORS = ("none", "readout", "grouped-readout")
PRIOR_LOGIT_BOUND = 20.0  # a prior of probability 1 - 2e-9 at most, so that a correction of finite size can undo it
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
    # "readout": the decoder's logits are a correction added to the logit of the per-token CLS readout's probability
    # (softmax over the pairs of each image), so an untrained decoder (its last layer starts at 0) is the readout;
    # "grouped-readout": the same on the readout pooled by a learned grouping of tokens (models/readout.py)
    prior: str = "none"
    # inference: each map scaled by CLIP's reading of its whole region (methods/verify.py); the measured recipe's, as
    # the held-out worlds measured it (docs/world.md). `--method synseg:unverified` reads the decoder's maps alone.
    verify: bool = False

    def __post_init__(self) -> None:
        check("pool_source", self.pool_source, self.pool_source in POOL_SOURCES, f"one of {POOL_SOURCES}")
        check("prior", self.prior, self.prior in PRIORS, f"one of {PRIORS}")
        check("pool_divisor", self.pool_divisor, self.pool_divisor in POOL_DIVISORS, f"one of {POOL_DIVISORS}")
        finite("background_threshold", self.background_threshold, 0.0, 1.0)
        check_templates("templates", self.templates)


@dataclass
class SynergyOutput:
    logits: torch.Tensor  # [N, 1, S, S]
    foreground: torch.Tensor  # [P, E] projected fg synergy vectors of the first P pairs
    background: torch.Tensor  # [P, E] projected bg synergy vectors
    readout: torch.Tensor | None = None  # [N, 1, S, S] the plain readout's cosines, with a prior or `with_readout`


class SynSeg(nn.Module):
    def __init__(self, config: SynSegConfig, backbone: ClipBackbone) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.decoder = SegDecoder(
            config.decoder, backbone.width, backbone.embed_dim, len(backbone.layers), backbone.grid, backbone.patch_size
        )
        depth = len(backbone.clip.visual.transformer.resblocks)
        needs_blocks = [name for name, on in (("pool_source 'attention'", config.pool_source == "attention"),
                                              (f"prior '{config.prior}'", config.prior != "none")) if on]
        needs_vit = needs_blocks + (["verify (region verification)"] if config.verify else [])
        if needs_vit and (not backbone.plain_blocks or getattr(backbone.clip.visual, "proj", None) is None):
            raise UserError(f"{needs_vit[0]} needs a plain open_clip ViT with a projection; backbone "
                            f"'{backbone.config.name}' is not one")
        self.block_layers = tuple(range(-1, depth - 1)) if needs_blocks else ()
        self.feature_layers = tuple(sorted(set(backbone.layers) | set(self.block_layers)))
        if config.pool_source != "attention":
            pooled_dim = backbone.width if config.pool_source == "backbone" else config.decoder.reduce_dim
            self.projector = Projector(pooled_dim, backbone.embed_dim, config.decoder.projector_hidden)
        if config.prior != "none":
            nn.init.zeros_(self.decoder.upsample.weight)
            nn.init.zeros_(self.decoder.upsample.bias)
        if config.prior == "grouped-readout":
            self.grouping = ReadoutGrouping(backbone.width, config.decoder.reduce_dim)

    @property
    def background_threshold(self) -> float:
        return self.config.background_threshold

    @property
    def templates(self) -> tuple[str, ...]:
        return self.config.templates

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what training changes: FiLM, decoder, projector. The backbone is named by the config instead."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def decode(self, layer_tokens: list[torch.Tensor], text: torch.Tensor, image_index: torch.Tensor) -> DecoderOutput:
        """Decode N (image, category) pairs: layer_tokens of B images, text [N, E], image_index [N] into 0..B-1."""
        tokens = self.decoder(self.decoder.reduce(layer_tokens), image_index, text)
        return DecoderOutput(self.decoder.to_logits(tokens), tokens[:, 1:])

    def forward(
        self, layer_tokens: list[torch.Tensor], text: torch.Tensor, image_index: torch.Tensor, pooled: int | None = None,
        with_readout: bool = False, readout: torch.Tensor | None = None,
    ) -> SynergyOutput:
        """Training pass on the tokens of `feature_layers`: activation maps of every pair, plus the FSS fg/bg vectors,
        in CLIP space, of the first `pooled` pairs (default all; pairs the loss only reads maps of need no pooling),
        and, when `with_readout` asks for them, the plain readout's cosines of every pair. `readout`: the images'
        `feature_readout`, when already computed (a feature cache keeps it)."""
        by_layer = dict(zip(self.feature_layers, layer_tokens))
        layer_tokens = [by_layer[layer] for layer in self.backbone.layers]
        block_inputs = [by_layer[layer] for layer in self.block_layers]
        reduced = self.decoder.reduce(layer_tokens)
        tokens = self.decoder(reduced, image_index, text)
        logits = self.decoder.to_logits(tokens)
        cosine = None
        if self.config.prior != "none" or with_readout:
            plain = self.readout(block_inputs) if readout is None else readout
            cosine = self.cosines(plain, text, image_index, logits.shape[-2:])
            if self.config.prior != "none":
                logits = logits + self.readout_prior(self.prior_cosines(plain, cosine, block_inputs, text, image_index),
                                                     image_index)
        pooled_index = image_index[:pooled]
        if self.config.pool_source == "attention":
            visual = self.backbone.clip.visual
            activations = token_activations(logits[:pooled], self.backbone.patch_size)
            both = masked_attention_pooling(visual.transformer.resblocks, block_inputs,
                                            torch.cat([activations, 1.0 - activations]), pooled_index.repeat(2))
            fg, bg = (visual.ln_post(both) @ visual.proj).chunk(2)
            return SynergyOutput(logits, fg, bg, cosine)
        if self.config.pool_source == "backbone":
            features = layer_tokens[-1][:, 1:][pooled_index]
        elif self.config.pool_source == "unconditional":
            features = self.decoder(reduced, torch.arange(len(layer_tokens[0]), device=text.device), None)[:, 1:].index_select(0, pooled_index)
        else:
            features = tokens[:pooled, 1:]
        activations = token_activations(logits[:pooled], self.backbone.patch_size)
        fg, bg = synergy_vectors(activations, features, self.config.pool_divisor)
        return SynergyOutput(logits, self.projector(fg), self.projector(bg), cosine)

    def readout(self, block_inputs: list[torch.Tensor]) -> torch.Tensor:
        """The per-token CLS readout [B, HW, E] (unit vectors, fp32, no gradient) from the tokens entering each block."""
        with torch.no_grad(), torch.autocast(block_inputs[0].device.type, enabled=False):
            return readout_embeddings(self.backbone.clip.visual, [x.float() for x in block_inputs])

    def feature_readout(self, layer_tokens: list[torch.Tensor]) -> torch.Tensor:
        """The readout of images given by the tokens of `feature_layers` (what a training step reads)."""
        by_layer = dict(zip(self.feature_layers, layer_tokens))
        return self.readout([by_layer[layer] for layer in self.block_layers])

    def cosines(self, embeddings: torch.Tensor, text: torch.Tensor, image_index: torch.Tensor,
                size: tuple[int, int]) -> torch.Tensor:
        """[N, 1, S, S] cosines of each pair's text with per-token embeddings [B, HW, E] of its image, upsampled
        bilinearly from the token grid as the readout method does; fp32."""
        with torch.autocast(text.device.type, enabled=False):
            cosine = torch.einsum("nte,ne->nt", embeddings[image_index], F.normalize(text.float(), dim=-1))
            return F.interpolate(cosine.view(-1, 1, *self.backbone.grid), size=size, mode="bilinear", align_corners=False)

    def prior_cosines(self, readout: torch.Tensor, cosine: torch.Tensor, block_inputs: list[torch.Tensor],
                      text: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        """The cosines the prior is made of: the plain readout's (`cosine`), or the grouped readout's."""
        if self.config.prior == "readout":
            return cosine
        return self.cosines(self.grouping(readout, block_inputs[-1][:, 1:]), text, image_index, cosine.shape[-2:])

    def readout_prior(self, cosine: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        """[N, 1, S, S] logits of the readout's class probabilities from its cosines [N, 1, S, S]: per pixel, the
        softmax at CLIP's logit scale over the pairs of each image. With a zero decoder the argmax over an image's
        pairs is the readout's. Bounded by PRIOR_LOGIT_BOUND."""
        scaled = cosine * self.backbone.clip.logit_scale.exp().float()
        shifted = scaled - per_image_max(scaled, image_index)
        total = shifted.new_zeros(int(image_index.max()) + 1, *shifted.shape[1:]).index_add_(0, image_index, shifted.exp())
        log_p = shifted - total.log()[image_index]
        log_not_p = torch.log(-torch.expm1(log_p.clamp_max(-1e-9)))
        return (log_p - log_not_p).clamp(-PRIOR_LOGIT_BOUND, PRIOR_LOGIT_BOUND)

    @torch.inference_mode()
    def activation_maps(self, views: EncodedViews, text: torch.Tensor) -> torch.Tensor:
        """[V, K, S, S] activations in [0, 1] for V views and K text embeddings, at the views' size."""
        return self._maps(views, text, activate=True)

    @torch.inference_mode()
    def logits(self, views: EncodedViews, text: torch.Tensor) -> torch.Tensor:
        """[V, K, S, S] decoder logits (what the slide protocol averages across windows), at the views' size."""
        return self._maps(views, text, activate=False)

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)

    def _maps(self, views: EncodedViews, text: torch.Tensor, activate: bool) -> torch.Tensor:
        """CLIP and the decoder's reductions run once per view; the decoder then runs per (view, class) pair, on CPU in
        chunks small enough for its FFN activations to stay in cache (twice as fast as one big batch)."""
        pixels = views.pixels
        classes = text.shape[0]
        by_layer = dict(zip(self.feature_layers, views.layer_tokens(self.feature_layers)))
        reduced = self.decoder.reduce([by_layer[layer] for layer in self.backbone.layers])
        image_index = torch.arange(len(pixels), device=pixels.device).repeat_interleave(classes)
        text = text.repeat(len(pixels), 1)
        pairs, tokens = len(pixels) * classes, reduced[0].shape[1]
        prior = None
        if self.config.prior != "none":
            block_inputs = [by_layer[layer] for layer in self.block_layers]
            plain = self.readout(block_inputs)
            cosine = self.cosines(plain, text, image_index, (self.backbone.image_size,) * 2)
            prior = self.readout_prior(self.prior_cosines(plain, cosine, block_inputs, text, image_index), image_index)
        chunk = pairs if pixels.device.type != "cpu" else max(1, DECODE_CHUNK_BYTES // (tokens * self.config.decoder.ffn_dim * 4))
        maps = None
        for start in range(0, pairs, chunk):
            part = slice(start, start + chunk)
            logits = self.decoder.to_logits(self.decoder(reduced, image_index[part], text[part]))
            if prior is not None:
                logits = logits + prior[part]
            if maps is None:
                maps = logits.new_empty(pairs, *logits.shape[1:])
            if activate:
                torch.sigmoid(logits, out=maps[part])
            else:
                maps[part] = logits
        maps = maps.view(len(pixels), classes, *maps.shape[-2:])
        if maps.shape[-2:] != pixels.shape[-2:]:
            maps = F.interpolate(maps, size=pixels.shape[-2:], mode="bilinear", align_corners=False)
        return maps


def build_synseg(config: SynSegConfig) -> SynSeg:
    """The one entry point: backbone from its config, trainable parts freshly initialised."""
    backbone = ClipBackbone(config.backbone)
    config.backbone = backbone.config
    return SynSeg(config, backbone)
