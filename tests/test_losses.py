"""MCCL and FSS against values computed by hand."""
from __future__ import annotations

import math

import pytest
import torch

from synseg.train.losses import LossConfig, absent_pairs, caption_readout_loss, mccl_loss, present_loss, text_gate
from synseg.models.fss import synergy_vectors, token_activations


def unit(*v: float) -> torch.Tensor:
    x = torch.tensor(v, dtype=torch.float32)
    return x / x.norm()


def test_synergy_vectors_are_activation_weighted_means():
    features = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]]])  # one pair, HW = 3, D = 2
    activations = torch.tensor([[1.0, 0.0, 0.5]])
    fg, bg = synergy_vectors(activations, features, eps=0.0)
    torch.testing.assert_close(fg, torch.tensor([[(1 + 1) / 1.5, (0 + 1) / 1.5]]))
    torch.testing.assert_close(bg, torch.tensor([[(0 + 1) / 1.5, (1 + 1) / 1.5]]))


def test_token_activations_average_each_patch():
    logits = torch.zeros(1, 1, 4, 4)
    logits[..., :2, :2] = 100.0  # top-left patch fully on
    torch.testing.assert_close(token_activations(logits, 2), torch.tensor([[1.0, 0.5, 0.5, 0.5]]))


def test_two_categories_by_hand():
    # image 0 has categories a, b; image 1 has one category c
    fg = torch.stack([unit(1, 0, 0), unit(0, 1, 0), unit(1, 1, 0)])
    bg = torch.stack([unit(1, 1, 0), unit(0, 0, 1), unit(-1, 0, 0)])
    text = torch.stack([unit(1, 0, 0), unit(1, 1, 0), unit(0, 0, 1)])
    image = torch.tensor([0, 0, 1])
    terms = mccl_loss(fg, bg, text, image, LossConfig())
    s = lambda c: 5e-4 + (1 - 1e-3) * (1 + c) / 2  # noqa: E731
    r = 1 / math.sqrt(2)
    l1_image0 = (-math.log(s(1.0)) - math.log(s(r))) / 2
    l1_image1 = -math.log(s(0.0))
    assert terms["intra_align"].item() == pytest.approx((l1_image0 + l1_image1) / 2, rel=1e-5)
    # fg.bg cosines: a: r (> 0.1, kept), b: 0 (gated out), c: -r (gated out) -> only image 0 has the term
    assert terms["intra_separate"].item() == pytest.approx(-math.log(1 - s(r)), rel=1e-5)
    # image 0's ordered pairs (a, b) and (b, a): cos(bg_a, bg_b) = 0, cos(fg_a, fg_b) = 0; image 1 has no pairs
    assert terms["inter_background"].item() == pytest.approx(-math.log(s(0.0)), rel=1e-5)
    assert terms["inter_foreground"].item() == pytest.approx(-math.log(1 - s(0.0)), rel=1e-5)
    expected_total = sum(terms[k].item() for k in ("intra_align", "intra_separate", "inter_background", "inter_foreground"))
    assert terms["total"].item() == pytest.approx(expected_total, rel=1e-6)


def test_weights_switch_terms_off_and_scale_them():
    torch.manual_seed(0)
    fg, bg, text = torch.randn(3, 6, 8).unbind(0)
    image = torch.tensor([0, 0, 0, 1, 1, 2])
    full = mccl_loss(fg, bg, text, image, LossConfig())
    only = mccl_loss(fg, bg, text, image, LossConfig(intra_separate=0, inter_background=0, inter_foreground=0, intra_align=2.0))
    assert set(only) == {"intra_align", "total"}
    assert only["total"].item() == pytest.approx(2 * full["intra_align"].item(), rel=1e-6)


def test_single_category_images_have_no_inter_terms():
    fg, bg, text = torch.randn(3, 2, 8).unbind(0)
    terms = mccl_loss(fg, bg, text, torch.tensor([0, 1]), LossConfig())
    assert terms["inter_background"].item() == 0 and terms["inter_foreground"].item() == 0


def test_separation_trains_even_when_fg_equals_bg():
    """At initialisation near-uniform activation maps make fg ~ bg; L2 must still have a gradient there."""
    bg = unit(1, 0, 0).unsqueeze(0)
    fg = bg.clone().requires_grad_()
    terms = mccl_loss(fg + 1e-4 * unit(0, 1, 0), bg, unit(0, 0, 1).unsqueeze(0), torch.tensor([0]), LossConfig(intra_align=0))
    assert terms["intra_separate"].item() == pytest.approx(-math.log(5e-4), rel=1e-3)
    terms["total"].backward()
    assert fg.grad.abs().sum() > 0


def test_gradients_flow_where_the_raw_cosine_is_negative():
    """The shifted similarity keeps L1's gradient alive for fg pointing away from its text (a raw-cos clamp kills it)."""
    fg = unit(-1, 0.2).unsqueeze(0).requires_grad_()
    text, bg = unit(1, 0).unsqueeze(0), unit(0, 1).unsqueeze(0)
    shifted = mccl_loss(fg, bg, text, torch.tensor([0]), LossConfig(intra_separate=0))
    shifted["total"].backward()
    assert fg.grad.abs().sum() > 0
    fg.grad = None
    clamped = mccl_loss(fg, bg, text, torch.tensor([0]), LossConfig(intra_separate=0, similarity="clamped_cos"))
    clamped["total"].backward()
    assert fg.grad.abs().sum() == 0


def test_pairwise_terms_wait_then_ramp_in():
    config = LossConfig(pairwise_start=10, pairwise_ramp=4)
    assert [config.pairwise_scale(step) for step in (0, 9, 10, 11, 13, 100)] == [0.0, 0.0, 0.25, 0.5, 1.0, 1.0]
    assert LossConfig().pairwise_scale(0) == 1.0
    torch.manual_seed(0)
    fg, bg, text = torch.randn(3, 4, 8).unbind(0)
    image = torch.tensor([0, 0, 1, 1])
    off = mccl_loss(fg, bg, text, image, config, pairwise_scale=0.0)
    assert off["total"].item() == pytest.approx(off["intra_align"].item(), rel=1e-6)
    half = mccl_loss(fg, bg, text, image, config, pairwise_scale=0.5)
    pairs = sum(half[k].item() for k in ("intra_separate", "inter_background", "inter_foreground"))
    assert half["total"].item() == pytest.approx(half["intra_align"].item() + 0.5 * pairs, rel=1e-6)


def test_text_gate_keeps_only_foregrounds_more_alike_than_their_texts():
    # two pairs in one image: texts at cos 0.6; fg's at cos 0.8 (gated in), then at cos 0 (gated out)
    text = torch.stack([unit(1, 0, 0), unit(0.6, 0.8, 0)])
    image = torch.tensor([0, 0])
    bg = torch.stack([unit(0, 0, 1), unit(0, 0, 1)])
    config = LossConfig(foreground_gate="text")
    close = mccl_loss(torch.stack([unit(1, 0, 0), unit(0.8, 0.6, 0)]), bg, text, image, config)
    s = 5e-4 + (1 - 1e-3) * (1 + 0.8) / 2
    assert close["inter_foreground"].item() == pytest.approx(-math.log(1 - s), rel=1e-5)
    apart = mccl_loss(torch.stack([unit(1, 0, 0), unit(0, 1, 0)]), bg, text, image, config)
    assert apart["inter_foreground"].item() == 0


def test_absent_phrases_come_from_other_captions_and_never_near_the_images_own():
    # image 0: "water"; image 1: "lake" (a synonym: same text), "star"; image 2: "sand"
    water, star, sand = unit(1, 0, 0), unit(0, 1, 0), unit(0, 0, 1)
    text = torch.stack([water, water, star, sand])
    image = torch.tensor([0, 1, 1, 2])
    torch.manual_seed(0)
    pairs = absent_pairs(text, image, LossConfig(absent_phrases=10))
    negatives = {(int(i), int(p)) for i, p in pairs.T}
    assert negatives == {(0, 2), (0, 3), (1, 3), (2, 0), (2, 1), (2, 2)}
    assert absent_pairs(text, image, LossConfig(absent_phrases=1)).shape == (2, 3)
    # "hard": the distinct phrases with the highest hardness in each image (columns: water, water, star, sand)
    hardness = torch.tensor([[0.0, 0.0, 0.2, 0.7], [0.0, 0.0, 0.0, 0.5], [0.3, 0.9, 0.8, 0.0]])
    hard = absent_pairs(text, image, LossConfig(absent_phrases=2, absent_choice="hard"), hardness)
    assert [(int(i), int(p)) for i, p in hard.T] == [(0, 3), (0, 2), (1, 3), (2, 2), (2, 0)]  # water's 2nd column never


def test_absent_maps_are_pushed_to_zero_by_cross_entropy():
    fg, bg, text = torch.randn(3, 2, 8).unbind(0)
    maps = torch.tensor([[0.5, 0.2], [0.9, 0.1]], requires_grad=True)
    config = LossConfig(absent_suppress=2.0)
    terms = mccl_loss(fg, bg, text, torch.tensor([0, 1]), config, absent_log_inactivity=torch.log1p(-maps))
    expected = -(math.log(0.5) + math.log(0.8) + math.log(0.1) + math.log(0.9)) / 4
    assert terms["absent_suppress"].item() == pytest.approx(expected, rel=1e-5)
    without = mccl_loss(fg, bg, text, torch.tensor([0, 1]), LossConfig())
    assert terms["total"].item() == pytest.approx(without["total"].item() + 2 * expected, rel=1e-5)
    terms["total"].backward()
    assert (maps.grad > 0).all()  # every absent activation is pushed down


def test_softmax_alignment_is_cross_entropy_over_the_batchs_phrases_without_synonyms():
    """align "softmax": L1 is -log softmax(scale * cos(fg_k, t))_k over the batch's distinct phrases; a phrase closer
    to a pair's own than the absent_text_quantile of the distinct phrases' cosines (a near-synonym) is left out of that
    pair's denominator."""
    config = LossConfig(intra_separate=0, inter_background=0, inter_foreground=0, align="softmax", logit_scale=10.0,
                        absent_text_quantile=0.6)
    # cosines between the distinct phrases: 0 (cat, dog), 0.05 (dog, kitty), 0.9986 (cat, kitty); of the 6 ordered
    # pairs the 0.6 quantile is the 4th smallest, 0.05: "kitty" is a synonym of "cat", "dog" of nothing
    cat, dog, kitty = unit(1, 0, 0), unit(0, 1, 0), unit(0.95, 0.05, 0)
    assert float(text_gate(torch.stack([cat, dog, kitty]), 0.6)) == pytest.approx(0.0525, abs=1e-3)
    text = torch.stack([cat, dog, cat, kitty])  # image 0: cat, dog; image 1: cat, kitty
    fg = torch.stack([unit(1, 0.2, 0), unit(0.1, 1, 0), unit(1, 0.2, 0), unit(1, 0.2, 0)])
    image_index = torch.tensor([0, 0, 1, 1])
    terms = mccl_loss(fg, fg, text, image_index, config)

    def nll(vector, own, others):
        logits = torch.stack([10 * vector @ t for t in [own, *others]])
        return -torch.log_softmax(logits, 0)[0]
    image0 = (nll(fg[0], cat, [dog]) + nll(fg[1], dog, [cat, kitty])) / 2
    image1 = (nll(fg[2], cat, [dog]) + nll(fg[3], kitty, [dog])) / 2
    torch.testing.assert_close(terms["intra_align"], (image0 + image1) / 2)


def test_present_term_is_the_cross_entropy_of_the_strongest_tokens_mean_towards_one():
    """Two named pairs of 5 tokens, a share of 0.4 of them (the 2 strongest) counted: mean(-log((0.9 + 0.7) / 2), -log((0.2 + 0.1) / 2))."""
    named = torch.tensor([[0.1, 0.9, 0.7, 0.3, 0.0], [0.05, 0.2, 0.1, 0.0, 0.0]])
    config = LossConfig(present_boost=0.5, present_share=0.4)
    text = torch.stack([unit(1, 0), unit(0, 1)])
    terms = mccl_loss(text, text, text, torch.tensor([0, 1]), config, named_activations=named)
    expected = (-math.log(0.8) - math.log(0.15)) / 2
    assert terms["present_boost"].item() == pytest.approx(expected, rel=1e-6)
    without = mccl_loss(text, text, text, torch.tensor([0, 1]), LossConfig(present_share=0.4), named_activations=named)
    assert terms["total"].item() == pytest.approx(without["total"].item() + 0.5 * expected, rel=1e-6)
    assert "present_boost" not in without
    assert present_loss(named[:1], 0.01).item() == pytest.approx(-math.log(0.9), rel=1e-6)  # one token at least


def test_caption_readout_targets_the_best_matching_named_phrase_per_pixel():
    """Per pixel, target 1 for the image's named phrase with the highest readout cosine, 0 for its others; another
    image's phrases do not compete."""
    cosine = torch.tensor([[0.9, 0.1], [0.2, 0.3], [0.0, -0.5]]).view(3, 1, 1, 2)  # pairs 0, 1 of image 0; 2 of image 1
    image_index = torch.tensor([0, 0, 1])
    logits = torch.zeros(3, 1, 1, 2, requires_grad=True)
    loss = caption_readout_loss(logits, cosine, image_index)
    loss.backward()
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]).view(3, 1, 1, 2)
    assert torch.equal(torch.sign(-logits.grad), 2 * target - 1)  # pushed up where the target is 1, down elsewhere
    torch.testing.assert_close(loss, torch.tensor(math.log(2)))
