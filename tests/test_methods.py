"""The training-free methods: each one's last-block change against an independent route (open_clip's own
nn.MultiheadAttention with tied projections or an additive mask), the registry, and several names per class."""
from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from PIL import Image

from synseg.errors import UserError
from synseg.encoding import EncodedViews
from synseg.methods import REGISTRY, build_predictor, build_predictors, list_methods, parse_method, parse_methods
from synseg.methods.base import released_index
from synseg.methods.naclip import neighbourhood
from synseg.methods.resclip import PRESETS as RESCLIP_PRESETS
from synseg.methods.resclip import ResCLIP, straight_paths
from synseg.methods.scclip import outliers, repaired
from synseg.methods.verify import RegionVerified
from synseg.models.synseg import SynSeg
from synseg.predictor import Segmenter


def last_block_input(backbone, seed: int = 1):
    """Tokens entering the last block of the tiny backbone for two random views, and that block."""
    torch.manual_seed(seed)
    visual = backbone.clip.visual
    pixels = backbone.normalize(torch.rand(2, 3, backbone.image_size, backbone.image_size))
    with torch.no_grad():
        x = visual._embeds(pixels)
        for block in visual.transformer.resblocks[:-1]:
            x = block(x)
    return x, visual.transformer.resblocks[-1]


def tied(block, source: str, target: str):
    """A copy of the block whose `target` projection (q, k or v) is its `source` projection."""
    block = copy.deepcopy(block)
    width = block.attn.embed_dim
    rows = {"q": slice(0, width), "k": slice(width, 2 * width), "v": slice(2 * width, 3 * width)}
    with torch.no_grad():
        block.attn.in_proj_weight[rows[target]] = block.attn.in_proj_weight[rows[source]]
        block.attn.in_proj_bias[rows[target]] = block.attn.in_proj_bias[rows[source]]
    return block


def attention(block, x, mask=None):
    y = block.ln_1(x)
    with torch.no_grad():
        return block.attn(y, y, y, need_weights=False, attn_mask=mask)[0]


def randomise_biases(block):
    """open_clip initialises attention biases to zero; random ones make q, k and v terms distinguishable."""
    torch.manual_seed(2)
    with torch.no_grad():
        block.attn.in_proj_bias.normal_(0, 0.5)
        block.attn.out_proj.bias.normal_(0, 0.5)


@pytest.fixture
def case(tiny_model):
    x, block = last_block_input(tiny_model.backbone)
    block = copy.deepcopy(block)
    randomise_biases(block)
    return tiny_model.backbone, x, block


def test_sclip_sums_query_query_and_key_key_attention_and_keeps_residual_and_mlp(case):
    backbone, x, block = case
    bias = block.attn.out_proj.bias
    # out_proj(A v + B v) = out_proj(A v) + out_proj(B v) - bias: each term is ordinary attention with tied projections
    mixed = attention(tied(block, "q", "k"), x) + attention(tied(block, "k", "q"), x) - bias
    expected = x + mixed
    expected = expected + block.mlp(block.ln_2(expected))
    got = build_predictor("sclip", backbone=backbone).last_block(block, x, backbone.grid)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_clearclip_is_query_query_attention_without_residual_or_mlp(case):
    backbone, x, block = case
    got = build_predictor("clearclip", backbone=backbone).last_block(block, x, backbone.grid)
    torch.testing.assert_close(got, attention(tied(block, "q", "k"), x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, attention(block, x), atol=1e-3)  # plain q-k attention differs


def test_naclip_is_key_key_attention_plus_a_gaussian_of_patch_distance(case):
    backbone, x, block = case
    omega = neighbourhood(backbone.grid)
    got = build_predictor("naclip", backbone=backbone).last_block(block, x, backbone.grid)
    torch.testing.assert_close(got, attention(tied(block, "k", "q"), x, mask=omega), rtol=1e-5, atol=1e-5)
    # the bias by hand on an 8x8 grid (std 5 patches): 1 on the diagonal, exp(-d^2 / 50) between patches, 0 for CLS
    assert omega.shape == (65, 65)
    assert omega[0].abs().sum() == 0 and omega[:, 0].abs().sum() == 0
    assert omega[1, 1] == 1.0
    assert math.isclose(omega[1, 2], math.exp(-1 / 50), rel_tol=1e-6)  # (0,0) -> (0,1)
    assert math.isclose(omega[1, 10], math.exp(-2 / 50), rel_tol=1e-6)  # (0,0) -> (1,1)
    assert math.isclose(omega[1, 64], math.exp(-98 / 50), rel_tol=1e-6)  # (0,0) -> (7,7)


def test_methods_run_on_windows_larger_than_clip_input(tiny_model):
    backbone = tiny_model.backbone
    text = backbone.embed_labels(["cat", "dog"], ("a photo of a {}.",))
    pixels = torch.randn(1, 3, 96, 128)  # a 12x16 token grid from CLIP's 8x8: position embeddings resized
    for name in list_methods("training-free"):
        method = build_predictor(name, backbone=backbone)
        logits = method.logits(EncodedViews(pixels, backbone), text)
        assert logits.shape == (1, 2, 96, 128) and logits.abs().max() <= 1 + 1e-5, name
        probabilities = method.activate(logits)
        torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(1, 96, 128))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        build_predictor("sclip", backbone=backbone).logits(EncodedViews(torch.randn(1, 3, 60, 64), backbone), text)


def test_resclip_without_its_blends_is_naclip_and_each_view_is_its_own(tiny_model):
    backbone = tiny_model.backbone
    text = torch.randn(3, backbone.embed_dim)
    torch.manual_seed(3)
    pixels = torch.randn(2, 3, 64, 80)
    plain = dataclasses.replace(RESCLIP_PRESETS["default"], rcs=(1.0, 0.0), sfr=(1.0, 0.0))
    naclip = build_predictor("naclip", backbone=backbone).logits(EncodedViews(pixels, backbone), text)
    torch.testing.assert_close(ResCLIP(backbone, plain).logits(EncodedViews(pixels, backbone), text), naclip, rtol=0,
                               atol=1e-6)
    resclip = build_predictor("resclip", backbone=backbone)
    both = resclip.logits(EncodedViews(pixels, backbone), text)
    assert (both - naclip).abs().max() > 1e-3  # RCS and SFR change the features
    alone = torch.cat([resclip.logits(EncodedViews(pixels[i:i + 1].clone(), backbone), text) for i in range(2)])
    torch.testing.assert_close(both, alone, rtol=0, atol=1e-6)


def test_resclip_paths_follow_the_rounded_straight_line_between_patches():
    path, on_path, steps = straight_paths((3, 4), torch.device("cpu"))  # patches numbered row-major, 4 a row
    pair = 0 * 12 + 11  # (0, 0) -> (2, 3): 3 Chebyshev steps through (1, 1) and (1, 2) (rounded 0.67 and 1.33 rows)
    assert steps[pair] == 3 and on_path[pair].tolist() == [True, True, True, True]
    assert path[pair].tolist() == [0, 5, 6, 11]
    pair = 1 * 12 + 2  # (0, 1) -> (0, 2): one step; the rest of the row is off the path
    assert steps[pair] == 1 and on_path[pair].tolist() == [True, True, False, False]
    assert released_index(5, 12) == 5 and released_index(8, 24) == 8 and released_index(8, 4) == 2


def test_scclip_marks_a_far_token_and_repairs_it_from_its_neighbours(tiny_model):
    torch.manual_seed(4)
    tokens = torch.randn(2, 36, 8) * 0.1
    tokens[0, 14] += 10.0  # an outlier at row 2, column 2 of a 6x6 grid
    marked = outliers(tokens)
    assert marked[0, 14] and marked.sum(dim=1).tolist() == [2, 2]  # the top 5%: ceil(0.05 * 36) tokens a view
    fixed = repaired(tokens, marked, (6, 6))
    neighbours = [i for i in (7, 8, 9, 13, 15, 19, 20, 21) if not marked[0, i]]
    torch.testing.assert_close(fixed[0, 14], tokens[0, neighbours].mean(dim=0))
    torch.testing.assert_close(fixed[~marked], tokens[~marked])
    backbone = tiny_model.backbone
    scclip, text = build_predictor("scclip", backbone=backbone), torch.randn(3, backbone.embed_dim)
    pixels = torch.randn(2, 3, 64, 64)
    alone = torch.cat([scclip.logits(EncodedViews(pixels[i:i + 1].clone(), backbone), text) for i in range(2)])
    torch.testing.assert_close(scclip.logits(EncodedViews(pixels, backbone), text), alone, rtol=0, atol=1e-6)


def test_proxyclip_mixes_values_only_among_tokens_its_dino_features_group(tiny_model, monkeypatch):
    backbone = tiny_model.backbone
    proxyclip = build_predictor("proxyclip:b16", backbone=backbone)
    assert proxyclip.foundation.patch_embed.proj.kernel_size == (16, 16)  # DINO ViT-B/16, random beside a random CLIP
    regions = torch.zeros(2, 4, 6, 10)
    regions[:, 0, :, :4], regions[:, 1, :, 4:] = 1.0, 1.0  # two regions on a 6 x 10 DINO grid
    monkeypatch.setattr(proxyclip, "proxy_features", lambda pixels: regions)
    features = proxyclip.dense_features(EncodedViews(torch.randn(2, 3, 64, 80), backbone))  # CLIP's grid 8 x 10: values resized to DINO's
    assert features.shape == (2, backbone.embed_dim, 6, 10)
    left, right = features[..., :4].flatten(2), features[..., 4:].flatten(2)
    torch.testing.assert_close(left, left[..., :1].expand_as(left))  # one mixture a region
    torch.testing.assert_close(right, right[..., :1].expand_as(right))
    assert (left[..., 0] - right[..., 0]).abs().max() > 1e-3

    def offline(*args, **kwargs):
        raise OSError("no network")
    monkeypatch.setattr("timm.create_model", offline)
    with pytest.raises(UserError, match="could not load vit_base_patch8_224.dino weights through timm"):
        build_predictor("proxyclip", backbone=backbone)


def test_registry_names_presets_and_errors():
    assert list_methods()[:2] == ["synseg", "clipseg"] and "readout" in list_methods("training-free")
    for name, spec in REGISTRY.items():  # every entry states its title, kind, presets, thresholds and templates
        assert spec.name == name and spec.title and spec.training_free == (spec.kind == "training-free")
        for preset in spec.presets.values():
            assert preset.background_threshold is None or 0 <= preset.background_threshold <= 1
            assert preset.templates is None or all("{}" in t for t in preset.templates)
        assert parse_method(name).title == spec.title
    assert [str(m) for m in parse_methods("sclip:voc, naclip,synseg,naclip")] == ["sclip:voc", "naclip", "synseg"]
    assert parse_method("sclip:voc").title == "SCLIP (voc)" and parse_method("clearclip").title == "ClearCLIP"
    with pytest.raises(UserError, match="unknown method 'sam'"):
        parse_method("sam")
    with pytest.raises(UserError, match="unknown preset 'ade' of sclip"):
        parse_method("sclip:ade")


def test_presets_set_each_methods_logit_scale_and_threshold(tiny_model):
    backbone = tiny_model.backbone
    assert build_predictor("sclip:voc", backbone=backbone).logit_scale == 65.0
    assert build_predictor("naclip", backbone=backbone).background_threshold == 0.1
    maskclip = build_predictor("maskclip", backbone=backbone)
    assert maskclip.logit_scale == pytest.approx(float(backbone.clip.logit_scale.exp()))  # CLIP's own temperature


def test_a_class_with_several_names_scores_the_best_of_them(tiny_model):
    segmenter = Segmenter(build_predictor("clearclip", backbone=tiny_model.backbone), "whole",
                          templates=("a photo of a {}.",))
    image = Image.fromarray((torch.rand(40, 48, 3) * 255).byte().numpy())
    flat = segmenter.activations(image, ["cat", "kitten", "dog"])
    grouped = segmenter.activations(image, [("cat", "kitten"), "dog"])
    torch.testing.assert_close(grouped, torch.stack([flat[:2].amax(dim=0), flat[2]]))
    result = segmenter.segment(image, ["cat", "dog"], background=True, threshold=0.0,
                               background_names=("sky", "wall"))
    both = segmenter.activations(image, [("sky", "wall"), "cat", "dog"])
    assert (result.label_map == both.argmax(dim=0).numpy()).all()  # background names win as class 0
    assert result.labels == ["cat", "dog"] and result.activations.shape == (2, 40, 48)


def test_readout_is_the_class_token_attending_to_itself_and_one_patch_token_in_every_block(tiny_model):
    """The CLS readout against open_clip's own blocks run on two-token sequences [class token, patch token i], the
    patch tokens taken from CLIP's unmasked pass."""
    backbone = copy.deepcopy(tiny_model.backbone)
    visual = backbone.clip.visual
    for block in visual.transformer.resblocks:
        randomise_biases(block)
    pixels = backbone.normalize(torch.rand(2, 3, backbone.image_size, backbone.image_size))
    with torch.no_grad():
        x, inputs = visual._embeds(pixels), []
        for block in visual.transformer.resblocks:
            inputs.append(x)
            x = block(x)
        per_token = []
        for i in range(1, x.shape[1]):
            cls = inputs[0][:, :1]
            for block, tokens in zip(visual.transformer.resblocks, inputs):
                y = block.ln_1(torch.cat([cls, tokens[:, i:i + 1]], dim=1))
                cls = cls + block.ls_1(block.attn(y[:, :1], y, y, need_weights=False)[0])
                cls = cls + block.ls_2(block.mlp(block.ln_2(cls)))
            per_token.append(cls)
        expected = torch.nn.functional.normalize(visual.ln_post(torch.cat(per_token, dim=1)) @ visual.proj, dim=-1)
    got = build_predictor("readout", backbone=backbone).dense_features(EncodedViews(pixels, backbone))
    torch.testing.assert_close(got.flatten(2).transpose(1, 2), expected, rtol=1e-5, atol=1e-5)
    # not CLIP's dense tokens (the value path): the readout is its own route
    maskclip = build_predictor("maskclip", backbone=backbone).dense_features(EncodedViews(pixels, backbone))
    assert not torch.allclose(got, maskclip, atol=1e-2)


def test_clipseg_loads_weights_saved_by_transformers_from_a_local_folder(tiny_model, tmp_path):
    """`--pretrained DIR`: a folder written by `save_pretrained` (model and image processor, as on the hub) gives the
    views' size and normalisation; labels are embedded by CLIPSeg's own text tower."""
    transformers = pytest.importorskip("transformers", reason="CLIPSeg needs transformers: pip install 'synseg[clipseg]'")
    from synseg.methods.clipseg import clipseg_dims

    torch.manual_seed(0)
    model = transformers.CLIPSegForImageSegmentation(transformers.CLIPSegConfig(**clipseg_dims(tiny_model.backbone)))
    model.save_pretrained(tmp_path)
    transformers.ViTImageProcessor(size={"height": 48, "width": 48}, image_mean=[0.5, 0.4, 0.3],
                                   image_std=[0.2, 0.2, 0.2]).save_pretrained(tmp_path)
    clipseg = build_predictor("clipseg", backbone="synseg-tiny", pretrained=str(tmp_path), device="cpu")
    assert clipseg.backbone.image_size == 48 and clipseg.backbone.mean.flatten().tolist() == pytest.approx([0.5, 0.4, 0.3])
    text = clipseg.backbone.embed_labels(["cat", "dog"], ("a photo of a {}.",))
    tokens = clipseg.backbone.tokenizer(["a photo of a cat.", "a photo of a dog."])
    torch.testing.assert_close(text, model.get_conditional_embeddings(2, tokens))
    image = Image.fromarray((torch.rand(30, 50, 3) * 255).byte().numpy())
    result = Segmenter(clipseg, "whole").segment(image, ["cat", "dog"])
    assert result.maps.shape == (2, 30, 50)


class _Constant:
    """A dense predictor whose maps are given, on a real backbone: what region verification wraps."""

    def __init__(self, backbone, maps: torch.Tensor) -> None:
        self.backbone, self.maps = backbone, maps
        self.background_threshold, self.templates = 0.5, ("a photo of a {}.",)

    def activation_maps(self, views, text):
        return self.maps


def test_region_verification_scales_each_map_by_what_clip_reads_in_its_region(tiny_model):
    """A map covering the whole image is CLIP's own image embedding (open_clip's encode_image), so its label keeps
    CLIP's zero-shot probability; a map of one patch is read through that patch alone; `+verify` wraps any method on
    a ViT and refuses one without CLIP's image tower."""
    backbone = copy.deepcopy(tiny_model.backbone)
    for block in backbone.clip.visual.transformer.resblocks:
        randomise_biases(block)
    pixels = backbone.normalize(torch.rand(2, 3, backbone.image_size, backbone.image_size))
    text = torch.nn.functional.normalize(torch.randn(3, backbone.clip.visual.proj.shape[1]), dim=-1)
    size = backbone.image_size
    maps = torch.ones(2, 3, size, size)
    verified = RegionVerified(_Constant(backbone, maps))
    with torch.no_grad():
        image = torch.nn.functional.normalize(backbone.clip.encode_image(pixels), dim=-1)
    zero_shot = torch.softmax(verified.logit_scale * image @ text.T, dim=-1)
    torch.testing.assert_close(verified.activation_maps(EncodedViews(pixels, backbone), text),
                               maps * zero_shot[..., None, None], rtol=1e-4, atol=1e-5)
    patch = backbone.patch_size
    one = torch.zeros(1, 3, size, size)
    one[..., :patch, :patch] = 1  # every label's region: the first patch token
    readout = build_predictor("readout", backbone=backbone).dense_features(EncodedViews(pixels[:1], backbone))[0, :, 0, 0]
    agreement = RegionVerified(_Constant(backbone, one)).agreement(EncodedViews(pixels[:1], backbone), one, text)
    torch.testing.assert_close(agreement[0], torch.softmax(verified.logit_scale * readout @ text.T, dim=-1),
                               rtol=1e-3, atol=1e-4)  # up to the 1e-6 floor masked_attention_pooling puts on a mask
    choice = parse_method("readout+verify")
    assert str(choice) == "readout+verify" and choice.title == "CLS readout + region verification"
    segmenter = Segmenter(build_predictor(choice, backbone=backbone), "whole")
    result = segmenter.segment(Image.fromarray((torch.rand(40, 48, 3) * 255).byte().numpy()), ["cat", "dog"])
    assert result.activations.shape == (2, 40, 48) and 0 <= result.activations.min() and result.activations.max() <= 1
    with pytest.raises(UserError, match="clipseg\\+verify: region verification needs an open_clip ViT"):
        build_predictor("clipseg+verify", backbone=backbone, pretrained="none")


def test_a_checkpoint_that_verifies_segments_with_verification_unless_asked_not_to(tiny_model, tmp_path):
    """`model.verify` (the measured recipe's) makes `--method synseg` the verified maps; `synseg:unverified` is the
    decoder alone; `synseg+verify` of such a checkpoint is the same predictor, which `distinct` shows once."""
    from synseg.checkpoint import load_config, save_model

    model = copy.deepcopy(tiny_model)
    model.config.verify = True
    checkpoint = str(save_model(model, tmp_path / "ckpt"))
    assert load_config(checkpoint).verify
    methods = ["synseg", "synseg:unverified", "synseg+verify"]
    built = list(build_predictors(methods, checkpoint, pretrained="none").values())
    verified, unverified, again = built
    assert isinstance(verified, RegionVerified) and not isinstance(unverified, RegionVerified) and again is verified
    assert list(map(str, build_predictors(methods, checkpoint, pretrained="none", distinct=True))) == methods[:2]
    size = unverified.backbone.image_size
    views = EncodedViews(unverified.backbone.normalize(torch.rand(1, 3, size, size)), unverified.backbone)
    text = unverified.backbone.embed_labels(["cat", "dog"], ("a photo of a {}.",))
    maps = unverified.activation_maps(views, text)
    torch.testing.assert_close(verified.activation_maps(views, text),
                               maps * verified.agreement(views, maps, text)[..., None, None])
    backbone = copy.deepcopy(tiny_model.backbone)
    backbone.plain_blocks = False  # as a ViT whose blocks synseg cannot run one by one
    with pytest.raises(UserError, match="verify \\(region verification\\) needs a plain open_clip ViT"):
        SynSeg(model.config, backbone)
    model.config.verify = False
    plain = str(save_model(model, tmp_path / "plain"))
    shown = build_predictors(methods, plain, pretrained="none", distinct=True)
    assert list(map(str, shown)) == ["synseg", "synseg+verify"] and isinstance(shown[parse_method("synseg+verify")],
                                                                               RegionVerified)
