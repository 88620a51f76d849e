"""The model's shapes, the multi-view stitching, and checkpoint round trips."""
from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import torch
from PIL import Image

from synseg.checkpoint import load_model, save_model
from synseg.errors import UserError
from synseg.encoding import EncodedViews
from synseg.protocols.views import make_views, stitch_views
from synseg.models import BackboneConfig, DecoderConfig, SynSegConfig, build_synseg
from synseg.models.fss import masked_attention_pooling
from synseg.predictor import Segmenter, best_label


@pytest.mark.parametrize(
    "name, size, patch, width, layers",
    [("synseg-tiny", 64, 8, 64, (1, 2, 3)), ("synseg-tiny-p16", 224, 16, 96, (1, 3, 4)), ("ViT-B-16", 224, 16, 768, (3, 6, 9))],
)
def test_decoder_shapes_across_backbones(name, size, patch, width, layers):
    model = build_synseg(SynSegConfig(backbone=BackboneConfig(name, None)))
    assert model.backbone.layers == layers
    tokens = model.backbone.encode_image(torch.rand(2, 3, size, size))
    grid = size // patch
    assert [t.shape for t in tokens] == [(2, 1 + grid * grid, width)] * 3
    text = model.backbone.encode_text(["cat", "dog", "rug"])
    out = model.decode(tokens, text, torch.tensor([0, 0, 1]))
    assert out.logits.shape == (3, 1, size, size)
    assert out.features.shape == (3, grid * grid, 64)
    synergy = model(tokens, text, torch.tensor([0, 0, 1]))
    assert synergy.foreground.shape == synergy.background.shape == (3, model.backbone.embed_dim)
    maps = model.activation_maps(EncodedViews(torch.rand(5, 3, size, size), model.backbone), text)
    assert maps.shape == (5, 3, size, size) and 0 <= maps.min() and maps.max() <= 1


@pytest.mark.parametrize("source, divisor", [("unconditional", "activation"), ("backbone", "tokens")])
def test_every_pooling_option_gives_vectors_in_clip_space_that_train(source, divisor):
    torch.manual_seed(0)
    model = build_synseg(SynSegConfig(backbone=BackboneConfig("synseg-tiny", None), pool_source=source, pool_divisor=divisor))
    tokens = model.backbone.encode_image(torch.rand(2, 3, 64, 64))
    text = model.backbone.encode_text(["cat", "dog", "rug"])
    out = model(tokens, text, torch.tensor([0, 0, 1]))
    assert out.foreground.shape == out.background.shape == (3, model.backbone.embed_dim)
    (out.foreground.square().sum() + out.background.sum()).backward()
    assert model.decoder.upsample.weight.grad.abs().sum() > 0 and model.projector.net.weight.grad.abs().sum() > 0
    with pytest.raises(UserError, match="pool_divisor"):
        build_synseg(SynSegConfig(backbone=BackboneConfig("synseg-tiny", None), pool_divisor="pixels"))


def test_attention_pooling_is_clips_class_token_with_the_map_as_attention_mask():
    """pool_source "attention": with A = 1 everywhere fg is CLIP's own image embedding; with any A it is CLIP's class
    token attending to its image's tokens through nn.MultiheadAttention with log A added to its logits."""
    torch.manual_seed(0)
    model = build_synseg(SynSegConfig(backbone=BackboneConfig("synseg-tiny", None), pool_source="attention"))
    backbone, visual = model.backbone, model.backbone.clip.visual
    blocks = visual.transformer.resblocks
    assert model.feature_layers == tuple(range(-1, len(blocks)))
    pixels = torch.rand(3, 3, 64, 64)
    tokens = backbone.encode_image(pixels, model.feature_layers)
    image_index = torch.tensor([2, 0, 0, 1, 2, 2])
    inputs = tokens[:len(blocks)]
    everything = masked_attention_pooling(blocks, inputs, torch.ones(6, 64), image_index)
    torch.testing.assert_close(visual.ln_post(everything) @ visual.proj, backbone.clip.encode_image(pixels)[image_index],
                               atol=1e-5, rtol=1e-5)
    maps = torch.rand(6, 64)
    pooled = masked_attention_pooling(blocks, inputs, maps, image_index)
    for row, (image, activation) in enumerate(zip(image_index, maps)):
        cls = inputs[0][image, :1]
        for block, x in zip(blocks, inputs):
            keys = block.ln_1(torch.cat([cls, x[image, 1:]]))[None]
            mask = torch.cat([torch.zeros(1), activation.log()])[None]
            cls = cls + block.attn(block.ln_1(cls)[None], keys, keys, need_weights=False, attn_mask=mask)[0][0]
            cls = cls + block.mlp(block.ln_2(cls))
        torch.testing.assert_close(pooled[row], cls[0], atol=1e-5, rtol=1e-5)
    text = backbone.encode_text(["cat", "dog", "rug"])
    out = model(tokens, text, torch.tensor([0, 0, 1]))
    (out.foreground.sum() - out.background.sum()).backward()
    assert model.decoder.upsample.weight.grad.abs().sum() > 0


def test_trainable_parameters_are_film_decoder_projector_only(tiny_model):
    trainable = {n.split(".")[0] for n, p in tiny_model.named_parameters() if p.requires_grad}
    assert trainable == {"decoder", "projector"}
    assert not any(p.requires_grad for p in tiny_model.backbone.parameters())


@pytest.mark.parametrize("quadrant", range(4))
def test_response_in_a_quadrant_view_lands_in_that_quadrant(quadrant):
    height, width = 60, 90
    maps = torch.zeros(5, 2, 16, 16)
    maps[1 + quadrant, 1] = 1.0  # class 1 fires everywhere in one quadrant view only
    stitched = stitch_views(maps, (height, width))
    assert stitched.shape == (2, height, width)
    top, left = (quadrant // 2) * height // 2, (quadrant % 2) * width // 2
    expected = torch.zeros(height, width)
    expected[top : top + height // 2, left : left + width // 2] = 0.5  # averaged with the silent whole view
    torch.testing.assert_close(stitched[1], expected)
    assert stitched[0].abs().max() == 0


def test_views_are_whole_image_then_quadrants():
    image = torch.zeros(3, 40, 60)
    image[:, 20:, 30:] = 1.0  # bottom-right quadrant white
    views = make_views(image, 32, 5)
    assert views.shape == (5, 3, 32, 32)
    assert views[4].min() > 0.99 and views[1:4].max() < 0.01
    assert 0.2 < views[0].mean() < 0.3


@pytest.mark.parametrize("classes", [1, 2, 7])
def test_best_label_is_max_over_classes_first_on_ties(classes):
    maps = torch.rand(classes, 9, 11, generator=torch.Generator().manual_seed(classes))
    maps[:, :3] = 0.5  # every class tied on these rows: the first class wins, as with max(dim=0)
    best, index = best_label(maps)
    expected_best, expected_index = maps.max(dim=0)
    assert torch.equal(best, expected_best) and torch.equal(index, expected_index)
    assert (index[:3] == 0).all()


def test_save_then_load_gives_identical_outputs(tmp_path):
    torch.manual_seed(3)
    config = SynSegConfig(backbone=BackboneConfig("synseg-tiny", None), decoder=DecoderConfig(projector_hidden=32))
    model = build_synseg(config).eval()
    for p in model.decoder.parameters():
        p.data.normal_(0, 0.05)
    save_model(model, tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["decoder"]["projector_hidden"] == 32
    # the random backbone is not in the checkpoint: give the reloaded model the same one
    loaded = load_model(tmp_path / "ckpt")
    loaded.backbone.load_state_dict(model.backbone.state_dict())
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    a = Segmenter(model).segment(image, ["cat", "dog"])
    b = Segmenter(loaded).segment(image, ["cat", "dog"])
    np.testing.assert_array_equal(a.activations, b.activations)
    np.testing.assert_array_equal(a.label_map, b.label_map)


def test_checkpoints_are_readable_by_others_as_the_umask_allows(tmp_path, tiny_model):
    """Checkpoints are built in a private temporary folder; the finished one must not stay private (0700)."""
    umask = os.umask(0)
    os.umask(umask)
    folder = save_model(tiny_model, tmp_path / "ckpt")
    save_model(tiny_model, folder)  # overwriting swaps the whole folder
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask
    assert {stat.S_IMODE(f.stat().st_mode) for f in folder.iterdir()} == {0o666 & ~umask}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no staging or old folder left behind


def test_checkpoint_whose_shapes_do_not_match_its_config_fails_clearly(tmp_path, tiny_model):
    save_model(tiny_model, tmp_path / "ckpt")
    config_path = tmp_path / "ckpt" / "config.json"
    config = json.loads(config_path.read_text())
    config["decoder"]["reduce_dim"] = 32
    config_path.write_text(json.dumps(config))
    with pytest.raises(UserError, match="has shape .* but its config builds"):
        load_model(tmp_path / "ckpt")


def test_segmenter_handles_every_image_mode(tiny_model, tmp_path):
    segmenter = Segmenter(tiny_model)
    rgb = np.random.default_rng(1).integers(0, 255, (37, 23, 3), dtype=np.uint8)
    images = {
        "L": Image.fromarray(rgb[..., 0]),
        "RGBA": Image.fromarray(np.dstack([rgb, rgb[..., :1]])),
        "P": Image.fromarray(rgb).convert("P"),
        "I;16": Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)),
        "1x1": Image.fromarray(rgb[:1, :1]),
    }
    for name, image in images.items():
        result = segmenter.segment(image, ["a", "b", "c"], background=True, threshold=0.5)
        assert result.label_map.shape == image.size[::-1], name
        assert result.activations.shape == (3, *image.size[::-1]), name
        assert set(np.unique(result.label_map)) <= {0, 1, 2, 3}
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: a 37x23 stored image is shown 23x37
    Image.fromarray(rgb).save(tmp_path / "rot.jpg", exif=exif)
    from synseg.io import load_image

    assert Segmenter(tiny_model, "whole").segment(load_image(tmp_path / "rot.jpg"), ["a"]).label_map.shape == (23, 37)


def test_background_threshold_decides_background(tiny_model):
    image = Image.new("RGB", (32, 32), "gray")
    segmenter = Segmenter(tiny_model, "whole")
    best = segmenter.segment(image, ["x", "y"]).activations.max(axis=0)
    assert (segmenter.segment(image, ["x", "y"], background=True, threshold=1.0).label_map == 0).all()
    low = segmenter.segment(image, ["x", "y"], background=True, threshold=float(best.min()) - 1e-6)
    assert (low.label_map > 0).all()


def test_outputs_get_ordinary_file_permissions(tmp_path):
    import os
    import stat

    from synseg.io import atomic_path

    with atomic_path(tmp_path / "x.txt") as tmp:
        tmp.write_text("hello")
    mode = stat.S_IMODE(os.stat(tmp_path / "x.txt").st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_an_untrained_model_with_the_readout_prior_is_the_readout(tiny_model):
    """prior "readout": the decoder's last layer starts at zero, so an untrained model's maps are the CLS readout's
    class probabilities, for any label set; training then learns a correction."""
    from synseg.methods import build_predictor

    torch.manual_seed(4)
    model = build_synseg(SynSegConfig(backbone=BackboneConfig("synseg-tiny", None), prior="readout",
                                      pool_source="attention")).eval()
    model.backbone.load_state_dict(tiny_model.backbone.state_dict())
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    labels = ["cat", "dog", "sofa", "rug"]
    ours = Segmenter(model, "whole").activations(image, labels)
    readout = Segmenter(build_predictor("readout", backbone=model.backbone), "whole").activations(image, labels)
    torch.testing.assert_close(ours, readout, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        model.decoder.upsample.bias.fill_(1.0)  # a correction moves the maps off the readout
    assert not torch.allclose(Segmenter(model, "whole").activations(image, labels), readout, atol=1e-2)


def test_the_grouped_readout_prior_trains_and_returns_the_plain_readouts_cosines():
    """prior "grouped-readout": its mixing weight gets a gradient through the prior, and the cosines handed to the loss
    (the pseudo-masks' source) are the plain readout's, not the learned grouping's."""
    torch.manual_seed(5)
    model = build_synseg(SynSegConfig(backbone=BackboneConfig("synseg-tiny", None), prior="grouped-readout",
                                      pool_source="attention")).train()
    pixels = model.backbone.normalize(torch.rand(2, 3, 64, 64))
    tokens = model.backbone.encode_image(pixels, model.feature_layers)
    text, image_index = torch.randn(3, model.backbone.embed_dim), torch.tensor([0, 0, 1])
    out = model(tokens, text, image_index, with_readout=True)
    out.logits.sum().backward()
    assert model.grouping.alpha.grad is not None and model.grouping.alpha.grad != 0
    by_layer = dict(zip(model.feature_layers, tokens))
    plain = model.readout([by_layer[layer] for layer in model.block_layers])
    torch.testing.assert_close(out.readout, model.cosines(plain, text, image_index, (64, 64)))
