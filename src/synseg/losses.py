"""Multi-Category Contrastive Learning (paper Eq. 3-8, METHOD.md 3) over the FSS synergy vectors."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from synseg.config import check, finite, positive_int

TERMS = ("intra_align", "intra_separate", "inter_background", "inter_foreground")
SIMILARITIES = ("shifted", "clamped_cos")
FOREGROUND_GATES = ("none", "text")
ALIGNMENTS = ("similarity", "softmax")


@dataclass
class LossConfig:
    """Weights of L1..L4 (0 switches a term off, as in the paper's ablation) and the similarity's details."""

    intra_align: float = 1.0  # L1: fg_k close to its text t_k
    # L1 as -log s(fg_k, t_k) (paper); "softmax": cross-entropy of fg_k over the batch's distinct phrases, as CLIP trains
    align: str = "similarity"
    logit_scale: float = 50.0  # the softmax's temperature (L1 "softmax" and background_text)
    intra_separate: float = 1.0  # L2: fg_k away from bg_k, only where cos(fg_k, bg_k) > separation_gate
    inter_background: float = 1.0  # L3: backgrounds of the categories of one image close to each other
    inter_foreground: float = 1.0  # L4: foregrounds of different categories of one image apart
    separation_gate: float = 0.1
    similarity: str = "shifted"  # (1 + cos) / 2 squeezed into [eps, 1 - eps]; "clamped_cos" is CCAM's clamp of raw cos
    eps: float = 5e-4
    foreground_gate: str = "none"  # "text": L4 only for pairs more alike than their texts (cos fg_i.fg_j > cos t_i.t_j)
    pairwise_start: int = 0  # iterations of L1 alone before L2-L4 come in
    pairwise_ramp: int = 0  # iterations over which L2-L4's weights then grow linearly to their full value
    absent_suppress: float = 0.0  # not in the paper: maps of phrases from other captions pushed to 0 (see absent_loss)
    absent_phrases: int = 4  # such phrases decoded per image
    absent_text_gate: float = 0.8  # a phrase is not taken as absent if its text is this close to one of the image's own
    absent_start: int = 0  # iterations of the named terms alone before absent_suppress comes in
    present_boost: float = 0.0  # not in the paper: each named phrase's map must fire somewhere (see present_loss)
    present_tokens: int = 8  # its strongest tokens, whose mean activation is pushed towards 1
    background_text: float = 0.0  # not in the paper: bg_k must not read as t_k among the batch's phrases (as CLIMS)

    def __post_init__(self) -> None:
        check("similarity", self.similarity, self.similarity in SIMILARITIES, f"one of {SIMILARITIES}")
        check("align", self.align, self.align in ALIGNMENTS, f"one of {ALIGNMENTS}")
        check("foreground_gate", self.foreground_gate, self.foreground_gate in FOREGROUND_GATES, f"one of {FOREGROUND_GATES}")
        for name in (*TERMS, "absent_suppress", "present_boost", "background_text"):
            finite(name, getattr(self, name))
        finite("logit_scale", self.logit_scale, 0.0, open_low=True)
        finite("separation_gate", self.separation_gate, -1.0, 1.0)
        finite("absent_text_gate", self.absent_text_gate, -1.0, 1.0)
        finite("eps", self.eps, 0.0, 0.25, open_low=True)
        for name in ("pairwise_start", "pairwise_ramp", "absent_start"):
            positive_int(name, getattr(self, name), 0)
        positive_int("absent_phrases", self.absent_phrases)
        positive_int("present_tokens", self.present_tokens)

    def pairwise_scale(self, step: int) -> float:
        """Factor on L2-L4's weights at this step.

        At initialisation every map is ~0.5 everywhere, so fg_k = bg_k and fg_i = fg_j: -log(1 - s) sits at -log(eps)
        with a gradient about 1000x L1's, and the separation terms decide what the maps become before L1 has
        given them any meaning.
        """
        if step < self.pairwise_start:
            return 0.0
        return min(1.0, (step - self.pairwise_start + 1) / self.pairwise_ramp) if self.pairwise_ramp else 1.0

    def suppresses_absent(self, step: int) -> bool:
        """Whether this step adds the absent term. Pushing every map down from the start slows L1's first descent
        (in the world's quick run its loss is 0.181 at step 100 with the term, 0.104 without: docs/world.md)."""
        return self.absent_suppress > 0 and step >= self.absent_start


def similarity(cos: torch.Tensor, config: LossConfig) -> torch.Tensor:
    """Cosine mapped into [eps, 1 - eps] so both -log s and -log(1 - s) stay finite.

    "shifted" squeezes (1 + cos) / 2 affinely instead of clamping it: a clamp has no gradient where it binds, and at
    initialisation the activation maps are near-uniform, so fg ~ bg and cos(fg, bg) ~ 1 would pin L2 at the clamp.
    """
    if config.similarity == "shifted":
        return config.eps + (1 - 2 * config.eps) * (1 + cos) / 2
    return cos.clamp(config.eps, 1 - config.eps)


def per_image_mean(values: torch.Tensor, image: torch.Tensor, mask: torch.Tensor, images: int) -> torch.Tensor:
    """Mean within each image of the masked values, then the mean over the images that have any."""
    weight = mask.to(values.dtype)
    sums = torch.zeros(images, dtype=values.dtype, device=values.device).index_add_(0, image, values * weight)
    counts = torch.zeros(images, dtype=values.dtype, device=values.device).index_add_(0, image, weight)
    present = counts > 0
    if not present.any():
        return values.sum() * 0.0
    return (sums[present] / counts[present]).mean()


def phrase_logits(vectors: torch.Tensor, text: torch.Tensor, config: LossConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled cosines [N, C] of unit vectors to the batch's C distinct unit phrase embeddings, and each pair's own
    phrase's column [N]. Phrases within `absent_text_gate` of a pair's own are left out of its row: a near-synonym
    ("red stripe" for "red stripes") is no negative."""
    candidates = torch.unique(text, dim=0)
    text_cos = text @ candidates.T
    own = text_cos.argmax(-1)
    synonyms = (text_cos > config.absent_text_gate) & (F.one_hot(own, len(candidates)) == 0)
    return (config.logit_scale * vectors @ candidates.T).masked_fill(synonyms, float("-inf")), own


def absent_pairs(text: torch.Tensor, image_index: torch.Tensor, config: LossConfig) -> torch.Tensor:
    """[2, M] (image, phrase index) pairs: per image up to `absent_phrases` phrases of the batch's other captions, none
    within `absent_text_gate` cosine of the image's own phrases ("a lake" is no negative for an image of "water")."""
    unit = F.normalize(text.float(), dim=-1)
    close = ((unit @ unit.T) > config.absent_text_gate).float()  # [N, N]
    images = image_index.unique()
    own = (image_index[None, :] == images[:, None]).float()  # [B, N]
    allowed = (own @ close) == 0  # [B, N]: close to none of the image's own phrases
    picks = torch.rand(allowed.shape, device=text.device).masked_fill(~allowed, 2.0).argsort(dim=1)[:, :config.absent_phrases]
    keep = allowed.gather(1, picks)
    return torch.stack([images[:, None].expand_as(picks)[keep], picks[keep]])


def absent_loss(log_inactivity: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy towards 0, -log(1 - A), of the token activation maps A [M, HW] of categories the
    caption does not name, given as log(1 - A) (`fss.token_log_inactivity`: finite however close A gets to 1).

    L1-L4 only ever see categories an image's caption names, so nothing trains a category's map down on images without
    it, and at inference such a category can win the argmax (docs/world.md). Captions leave things out, so some of these
    "absent" phrases are present: the term is a weak image-level label, not ground truth.
    """
    return -log_inactivity.float().mean()


def present_loss(named_activations: torch.Tensor, tokens: int) -> torch.Tensor:
    """Mean binary cross-entropy towards 1 of the mean of each named phrase's `tokens` strongest token activations
    ([N, HW] maps): the multiple-instance counterpart of `absent_loss`, as weakly supervised segmentation trains from
    image-level labels. L1-L4 compare directions only, so nothing else keeps a named category's map from fading."""
    strongest = named_activations.float().topk(min(tokens, named_activations.shape[-1]), dim=-1).values.mean(-1)
    return F.binary_cross_entropy(strongest, torch.ones_like(strongest))


def mccl_loss(
    foreground: torch.Tensor, background: torch.Tensor, text: torch.Tensor, image_index: torch.Tensor, config: LossConfig,
    pairwise_scale: float = 1.0, absent_log_inactivity: torch.Tensor | None = None,
    named_activations: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The four MCCL terms and their weighted total for N (image, category) pairs; pairs of one image share image_index.

    With `config.absent_suppress`, `absent_log_inactivity` [M, HW] is log(1 - A) of the maps of phrases the images'
    captions do not name; with `config.present_boost`, `named_activations` [N, HW] are the maps of the N pairs.
    """
    fg, bg, t = (F.normalize(x.float(), dim=-1) for x in (foreground, background, text))
    images = int(image_index.max()) + 1
    everyone = torch.ones_like(image_index, dtype=torch.bool)
    terms: dict[str, torch.Tensor] = {}
    if config.intra_align:
        if config.align == "softmax":
            logits, own = phrase_logits(fg, t, config)
            align = F.cross_entropy(logits, own, reduction="none")
        else:
            align = -torch.log(similarity((fg * t).sum(-1), config))
        terms["intra_align"] = per_image_mean(align, image_index, everyone, images)
    if config.background_text:
        logits, own = phrase_logits(bg, t, config)
        reads_as_own = torch.softmax(logits, dim=-1).gather(1, own[:, None])[:, 0]
        terms["background_text"] = per_image_mean(-torch.log1p(-reads_as_own.clamp_max(1 - config.eps)), image_index,
                                                  everyone, images)
    if config.intra_separate:
        cos = (fg * bg).sum(-1)
        gate = cos.detach() > config.separation_gate
        terms["intra_separate"] = per_image_mean(-torch.log(1 - similarity(cos, config)), image_index, gate, images)
    if config.inter_background or config.inter_foreground:
        same_image = image_index[:, None] == image_index[None, :]
        pairs = same_image & ~torch.eye(len(image_index), dtype=torch.bool, device=image_index.device)
        pair_image = image_index[:, None].expand_as(pairs)[pairs]
        pair_mask = torch.ones_like(pair_image, dtype=torch.bool)
        if config.inter_background:
            s = similarity((bg @ bg.T)[pairs], config)
            terms["inter_background"] = per_image_mean(-torch.log(s), pair_image, pair_mask, images)
        if config.inter_foreground:
            cos = (fg @ fg.T)[pairs]
            gate = cos.detach() > (t @ t.T)[pairs] if config.foreground_gate == "text" else pair_mask
            terms["inter_foreground"] = per_image_mean(-torch.log(1 - similarity(cos, config)), pair_image, gate, images)
    if config.absent_suppress and absent_log_inactivity is not None and len(absent_log_inactivity):
        terms["absent_suppress"] = absent_loss(absent_log_inactivity)
    if config.present_boost and named_activations is not None:
        terms["present_boost"] = present_loss(named_activations, config.present_tokens)
    terms["total"] = sum(getattr(config, name) * (pairwise_scale if name in TERMS[1:] else 1.0) * value
                         for name, value in terms.items())
    return terms
