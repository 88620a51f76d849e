"""Multi-Category Contrastive Learning (paper Eq. 3-8, METHOD.md 3) over the FSS synergy vectors."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from synseg.config import check, finite, positive_int
from synseg.models.readout import per_image_max

TERMS = ("intra_align", "intra_separate", "inter_background", "inter_foreground")
SIMILARITIES = ("shifted", "clamped_cos")
FOREGROUND_GATES = ("none", "text")
ALIGNMENTS = ("similarity", "softmax")
ABSENT_CHOICES = ("random", "hard")


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
    # a phrase is not taken as absent if its text is closer to one of the image's own than this quantile of the cosines
    # between the batch's distinct phrases (see text_gate; docs/training.md gives the cosine it comes to in the world)
    absent_text_quantile: float = 0.975
    absent_start: int = 0  # iterations of the named terms alone before absent_suppress comes in
    # which phrases: "random" ones, or "hard": those the frozen CLIP's per-token readout finds most of in the image
    absent_choice: str = "random"
    present_boost: float = 0.0  # not in the paper: each named phrase's map must fire somewhere (see present_loss)
    present_share: float = 0.125  # share of the image's tokens, the strongest, whose mean activation is pushed to 1
    background_text: float = 0.0  # not in the paper: bg_k must not read as t_k among the batch's phrases (as CLIMS)
    caption_readout: float = 0.0  # not in the paper: named maps towards the readout restricted to the caption's phrases

    def __post_init__(self) -> None:
        check("similarity", self.similarity, self.similarity in SIMILARITIES, f"one of {SIMILARITIES}")
        check("align", self.align, self.align in ALIGNMENTS, f"one of {ALIGNMENTS}")
        check("absent_choice", self.absent_choice, self.absent_choice in ABSENT_CHOICES, f"one of {ABSENT_CHOICES}")
        check("foreground_gate", self.foreground_gate, self.foreground_gate in FOREGROUND_GATES, f"one of {FOREGROUND_GATES}")
        for name in (*TERMS, "absent_suppress", "present_boost", "background_text", "caption_readout"):
            finite(name, getattr(self, name))
        finite("logit_scale", self.logit_scale, 0.0, open_low=True)
        finite("separation_gate", self.separation_gate, -1.0, 1.0)
        finite("absent_text_quantile", self.absent_text_quantile, 0.0, 1.0)
        finite("present_share", self.present_share, 0.0, 1.0, open_low=True)
        finite("eps", self.eps, 0.0, 0.25, open_low=True)
        for name in ("pairwise_start", "pairwise_ramp", "absent_start"):
            positive_int(name, getattr(self, name), 0)
        positive_int("absent_phrases", self.absent_phrases)

    def pairwise_scale(self, step: int) -> float:
        """Factor on L2-L4's weights at this step.

        At initialisation every map is ~0.5 everywhere, so fg_k = bg_k and fg_i = fg_j: -log(1 - s) sits at -log(eps)
        with a gradient of order 1/eps, far above L1's, and the separation terms decide what the maps become before L1
        has given them any meaning. 0 before `pairwise_start`, then rising linearly over `pairwise_ramp` steps to 1
        (at once when `pairwise_ramp` is 0).
        """
        if step < self.pairwise_start:
            return 0.0
        return min(1.0, (step - self.pairwise_start + 1) / self.pairwise_ramp) if self.pairwise_ramp else 1.0

    def suppresses_absent(self, step: int) -> bool:
        """Whether this step adds the absent term: `absent_suppress` is on and `step` >= `absent_start` (pushing every
        map down from the start slows L1's first descent; docs/training.md)."""
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


def text_gate(unit_text: torch.Tensor, quantile: float) -> torch.Tensor:
    """The cosine above which two phrases count as one: the `quantile` (nearest rank) of the cosines between the
    distinct phrases of `unit_text` [N, E] (unit rows), a scalar tensor. Set from the batch's own similarities, not as
    a fixed cosine, because how alike unrelated prompts are differs between CLIPs (docs/training.md). A batch with one
    distinct phrase has no pairs: the gate is then just below 1, so only identical texts count as one."""
    distinct = torch.unique(unit_text, dim=0)
    if len(distinct) < 2:
        return unit_text.new_tensor(1.0 - 1e-6)
    cosine = distinct @ distinct.T
    pairs = cosine[~torch.eye(len(distinct), dtype=torch.bool, device=cosine.device)]
    # the nearest-rank quantile: torch.quantile refuses more than 2^24 values, a batch of 4,097 distinct phrases
    return pairs.kthvalue(max(1, math.ceil(quantile * len(pairs)))).values


def phrase_logits(vectors: torch.Tensor, text: torch.Tensor, config: LossConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled cosines [N, C] of unit vectors to the batch's C distinct unit phrase embeddings, and each pair's own
    phrase's column [N]. Phrases above `text_gate` of a pair's own are left out of its row: a near-synonym ("red
    stripe" for "red stripes") is no negative."""
    candidates = torch.unique(text, dim=0)
    text_cos = text @ candidates.T
    own = text_cos.argmax(-1)
    synonyms = (text_cos > text_gate(text, config.absent_text_quantile)) & (F.one_hot(own, len(candidates)) == 0)
    return (config.logit_scale * vectors @ candidates.T).masked_fill(synonyms, float("-inf")), own


def absent_pairs(text: torch.Tensor, image_index: torch.Tensor, config: LossConfig,
                 hardness: torch.Tensor | None = None) -> torch.Tensor:
    """[2, M] (image, phrase index) pairs: per image up to `absent_phrases` phrases of the batch's other captions, none
    above `text_gate` of the image's own phrases ("a lake" is no negative for an image of "water"). Drawn at random,
    or with `hardness` [images, N] (e.g. the readout's peak cosine of each phrase in each image) the hardest distinct
    phrases first."""
    unit = F.normalize(text.float(), dim=-1)
    close = ((unit @ unit.T) > text_gate(unit, config.absent_text_quantile)).float()  # [N, N]
    images = image_index.unique()
    own = (image_index[None, :] == images[:, None]).float()  # [B, N]
    allowed = (own @ close) == 0  # [B, N]: close to none of the image's own phrases
    if hardness is None:
        order = torch.rand(allowed.shape, device=text.device)
    else:
        _, inverse = torch.unique(unit, dim=0, return_inverse=True)
        columns = torch.arange(len(unit), device=text.device)
        first = torch.full_like(columns, len(unit)).scatter_reduce(0, inverse, columns, "amin")[inverse] == columns
        allowed = allowed & first  # each distinct phrase once
        order = -hardness[images].float()
    picks = order.masked_fill(~allowed, float("inf")).argsort(dim=1)[:, :config.absent_phrases]
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


def present_loss(named_activations: torch.Tensor, share: float) -> torch.Tensor:
    """Mean binary cross-entropy towards 1 of the mean of each named phrase's strongest token activations ([N, HW]
    maps), a `share` of the tokens (at least one): the multiple-instance counterpart of `absent_loss`, as weakly supervised segmentation trains from
    image-level labels. L1-L4 compare directions only, so nothing else keeps a named category's map from fading."""
    tokens = max(1, round(share * named_activations.shape[-1]))
    strongest = named_activations.float().topk(tokens, dim=-1).values.mean(-1)
    return F.binary_cross_entropy(strongest, torch.ones_like(strongest))


def caption_readout_loss(logits: torch.Tensor, cosine: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the named phrases' maps (logits [N, 1, S, S]) towards the per-token CLS readout
    restricted to each caption's phrases: per pixel 1 for the named phrase whose text the readout's cosine `cosine`
    [N, 1, S, S] matches best among its image's, 0 for the others. Choosing among the 2-5 phrases a caption names is
    far easier for the readout than among a whole vocabulary, so these pseudo-masks are better than the readout's own
    open-vocabulary maps (docs/world.md); things a caption leaves out go to a named phrase, so they are not labels."""
    target = (cosine >= per_image_max(cosine, image_index)).float()
    return F.binary_cross_entropy_with_logits(logits.float(), target)


def mccl_loss(
    foreground: torch.Tensor, background: torch.Tensor, text: torch.Tensor, image_index: torch.Tensor, config: LossConfig,
    pairwise_scale: float = 1.0, absent_log_inactivity: torch.Tensor | None = None,
    named_activations: torch.Tensor | None = None, caption_readout: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The four MCCL terms and their weighted total for N (image, category) pairs; pairs of one image share image_index.

    With `config.absent_suppress`, `absent_log_inactivity` [M, HW] is log(1 - A) of the maps of phrases the images'
    captions do not name; with `config.present_boost`, `named_activations` [N, HW] are the maps of the N pairs; with
    `config.caption_readout`, `caption_readout` is `caption_readout_loss` of the N pairs.
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
        terms["present_boost"] = present_loss(named_activations, config.present_share)
    if config.caption_readout and caption_readout is not None:
        terms["caption_readout"] = caption_readout
    terms["total"] = sum(getattr(config, name) * (pairwise_scale if name in TERMS[1:] else 1.0) * value
                         for name, value in terms.items())
    return terms
