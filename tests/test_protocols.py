"""Evaluation protocols: slide windows (placement, averaging, a single window equals `whole`) and PAMR."""
from __future__ import annotations

import pytest
import torch

from synseg.errors import UserError
from synseg.encoding import ImageEncoding
from synseg.methods import build_predictor
from synseg.protocols.pamr import pamr
from synseg.protocols import Slide, Views, build_protocol, parse_protocols
from synseg.protocols.slide import average_windows, resized_size, window_boxes


def test_windows_cover_the_image_flush_with_its_borders():
    assert window_boxes(336, 448, 224, 112) == [(0, 224, 0, 224), (0, 224, 112, 336), (0, 224, 224, 448),
                                               (112, 336, 0, 224), (112, 336, 112, 336), (112, 336, 224, 448)]
    assert window_boxes(336, 400, 224, 112)[2] == (0, 224, 176, 400)  # the last column is moved back inside
    assert window_boxes(100, 150, 224, 112) == [(0, 100, 0, 150)]  # smaller than a window: one window, the image
    assert resized_size(375, 500, 336) == (336, 448) and resized_size(100, 3000, 336) == (68, 2048)


def test_a_response_in_one_window_lands_there_and_overlaps_are_averaged():
    boxes = window_boxes(6, 6, 4, 2)  # 4 windows of 4x4
    windows = torch.zeros(4, 1, 4, 4)
    windows[3] = 1.0  # only the bottom-right window responds
    out = average_windows(windows, boxes, (6, 6))[0]
    assert out[:2].abs().sum() == 0 and out[:, :2].abs().sum() == 0  # nothing outside that window
    assert out[4:, 4:].eq(1).all()  # where it alone covers the image
    assert out[2:4, 2:4].eq(0.25).all() and out[2:4, 4:].eq(0.5).all()  # covered by 4 and 2 windows
    constants = torch.arange(1.0, 5.0).view(4, 1, 1, 1).expand(4, 1, 4, 4)
    out = average_windows(constants, boxes, (6, 6))[0]
    assert out[0, 0] == 1 and out[0, 3] == 1.5 and out[3, 3] == 2.5 and out[5, 5] == 4


def test_a_window_the_size_of_the_image_equals_whole(tiny_model):
    backbone = tiny_model.backbone
    text = backbone.embed_labels(["cat", "dog", "sky"], ("a photo of a {}.",))
    image = ImageEncoding(torch.rand(3, backbone.image_size, backbone.image_size))
    for predictor in (build_predictor("naclip", backbone=backbone), tiny_model):
        slide = Slide(short=backbone.image_size, window=backbone.image_size, stride=8).maps(predictor, image, text)
        torch.testing.assert_close(slide, Views(1).maps(predictor, image, text), rtol=1e-5, atol=1e-5)


def test_slide_runs_any_method_on_a_non_square_image(tiny_model):
    backbone = tiny_model.backbone
    text = backbone.embed_labels(["cat", "dog"], ("a photo of a {}.",))
    image = ImageEncoding(torch.rand(3, 50, 90))
    for predictor in (build_predictor("sclip", backbone=backbone), tiny_model):
        maps = build_protocol("slide:60/40/20").maps(predictor, image, text)
        assert maps.shape == (2, 50, 90) and 0 <= maps.min() and maps.max() <= 1


def test_pamr_sharpens_a_blurred_mask_towards_the_image_edge():
    # 64 wide: the local spread pools TCL's dilations up to 24, which on a narrower image all straddle the edge
    image = torch.zeros(1, 3, 64, 64)
    image[..., 32:] = 1.0  # a vertical edge between columns 31 and 32
    image += 0.02 * torch.randn_like(image)
    columns = torch.arange(64.0)
    blurred = torch.sigmoid((31.5 - columns) / 4).expand(64, 64)  # class 0 fades out across the edge
    masks = torch.stack([blurred, 1 - blurred])[None]
    refined = pamr(image, masks)
    ideal = (columns < 32).float().expand(64, 64)
    assert (refined[0, 0] - ideal).abs().mean() < 0.5 * (blurred - ideal).abs().mean()
    jump = lambda m: (m[:, 31] - m[:, 32]).mean()  # noqa: E731
    assert jump(refined[0, 0]) > 2 * jump(blurred)
    torch.testing.assert_close(refined.sum(dim=1), torch.ones(1, 64, 64))  # a convex mixing: probabilities stay ones


def test_protocol_names_and_errors():
    assert [p.describe() for p in parse_protocols("slide,quadrants,whole,slide-tcl", pamr=True)] == [
        "slide + PAMR (336/224/112)", "quadrants + PAMR", "whole + PAMR", "slide-tcl + PAMR (448/448/224)"]
    with pytest.raises(UserError, match="unknown protocol 'synseg'"):  # a method's name, not a protocol's
        build_protocol("synseg")
    with pytest.raises(UserError, match="unknown protocol 'grid'"):
        build_protocol("grid")
    with pytest.raises(UserError, match="slide:SHORT/WINDOW/STRIDE"):
        build_protocol("slide:336/224")


def test_an_image_encoding_cuts_views_and_runs_clip_once_for_every_method_and_label_set(tiny_model, monkeypatch):
    """Encode once, decode many: methods on one backbone asked about one ImageEncoding share its views and CLIP's
    pass; another encoding of the same pixels computes its own."""
    backbone = tiny_model.backbone
    passes = []
    original = type(backbone).hidden_states
    monkeypatch.setattr(type(backbone), "hidden_states", lambda self, pixels: passes.append(1) or original(self, pixels))
    image = torch.rand(3, 40, 56)
    encoding = ImageEncoding(image)
    protocol = build_protocol("quadrants")
    for name in ("maskclip", "sclip", "readout"):
        for labels in (["cat", "dog"], ["sky"]):
            text = backbone.embed_labels(labels, ("a photo of a {}.",))
            protocol.maps(build_predictor(name, backbone=backbone), encoding, text)
    assert len(passes) == 1
    protocol.maps(build_predictor("maskclip", backbone=backbone), ImageEncoding(image), text)
    assert len(passes) == 2
