"""The `synseg` command as a user meets it: outputs of the right size, one-line errors, no half-written files."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from synseg.cli import main

TINY = ["--backbone", "synseg-tiny", "--pretrained", "none"]


def synseg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "synseg.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("protocol", ["whole", "quadrants"])
def test_segment_writes_maps_of_each_images_size(real_data, tmp_path, protocol):
    images = sorted((real_data / "VOCdevkit/VOC2012/JPEGImages").glob("*.jpg"))[:3]
    odd = tmp_path / "odd.png"
    Image.fromarray(np.zeros((41, 77), dtype=np.uint8)).save(odd)
    out = tmp_path / "out"
    code = main(["segment", *map(str, images), str(odd), "--labels", "person, dog, sofa", "--out", str(out), "--protocol", protocol, "--background",
                 *TINY])
    assert code == 0
    for path in [*images, odd]:
        label_map = Image.open(out / f"{path.stem}.png")
        assert label_map.mode == "P" and label_map.size == Image.open(path).size
        assert np.asarray(label_map).max() <= 3
        assert Image.open(out / f"{path.stem}.heat.dog.png").size == label_map.size
        overlay = Image.open(out / f"{path.stem}.overlay.png")
        assert overlay.height >= label_map.height and overlay.width > label_map.width  # legend beside the image
    assert json.loads((out / "labels.json").read_text())["classes"] == ["background", "person", "dog", "sofa"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


SEGMENT_OPTIONS = {
    "maskclip, slide": (["--method", "maskclip", "--protocol", "slide:96/64/32"], "maskclip", "slide:96/64/32", False, "fp32"),
    "sclip, pamr": (["--method", "sclip", "--pamr"], "sclip", "quadrants", True, "fp32"),
    "maskclip, bf16": (["--method", "maskclip", "--precision", "bf16"], "maskclip", "quadrants", False, "bf16"),
}


@pytest.mark.parametrize("case", SEGMENT_OPTIONS)
def test_segment_with_a_training_free_method_writes_what_the_library_computes(case, real_data, tmp_path):
    """--method, --protocol, --pamr and --precision reach the maps: the files equal the library's result under the
    same options, and that result differs from the one without them."""
    import torch

    from synseg.methods import build_predictor
    from synseg.protocols import parse_protocols
    from synseg.models.backbone import BackboneConfig, ClipBackbone
    from synseg.predictor import Segmenter
    from synseg.render import heat_map

    options, method, protocol, pamr, precision = SEGMENT_OPTIONS[case]
    image = Image.open(sorted((real_data / "VOCdevkit/VOC2012/JPEGImages").glob("*.jpg"))[0]).convert("RGB").resize((120, 90))
    image.save(tmp_path / "x.png")
    torch.manual_seed(0)
    assert main(["segment", str(tmp_path / "x.png"), "--labels", "person, dog", "--out", str(tmp_path / "o"), *options, *TINY]) == 0
    torch.manual_seed(0)  # the same random backbone as the command's
    predictor = build_predictor(method, backbone=ClipBackbone(BackboneConfig("synseg-tiny", None)))

    def result(protocol: str, pamr: bool, precision: str):
        segmented = Segmenter(predictor, parse_protocols(protocol, pamr)[0], precision=precision).segment(
            image, ["person", "dog"])
        return segmented.label_map, np.asarray(heat_map(segmented.maps[1].cpu().numpy()))

    label_map, heat = result(protocol, pamr, precision)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o" / "x.png")), label_map)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o" / "x.heat.dog.png")), heat)
    plain_map, plain_heat = result("quadrants", False, "fp32")
    assert not np.array_equal(plain_heat, heat), "the options changed nothing"


def test_info_reports_the_papers_parameter_count():
    result = synseg("info", "--backbone", "ViT-B-16", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert 150e6 <= info["total_params"] <= 152e6
    assert info["trainable_params"] < 3e6


def test_bad_inputs_get_one_line_errors(tmp_path):
    image = tmp_path / "x.png"
    Image.new("RGB", (20, 20)).save(image)
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("hello")
    blocker = tmp_path / "file"
    blocker.write_text("")
    world_config = tmp_path / "world.json"
    world_config.write_text('{"model": {"pool_source": "conditional"}, "iterations": 5}')
    no_variants = tmp_path / "no-variants.json"
    no_variants.write_text('{"variants": []}')
    cases = {
        "unknown key(s) iterations": ["world", "--out", str(tmp_path / "w"), "--config", str(world_config)],
        "image not found": ["segment", str(tmp_path / "missing.jpg"), "--labels", "cat", "--out", str(tmp_path / "o"), *TINY],
        "not a readable image": ["segment", str(not_image), "--labels", "cat", "--out", str(tmp_path / "o"), *TINY],
        "non-empty": ["segment", str(image), "--labels", "cat,,dog", "--out", str(tmp_path / "o"), *TINY],
        "duplicate label": ["segment", str(image), "--labels", "cat, dog, cat", "--out", str(tmp_path / "o"), *TINY],
        "checkpoint not found": ["segment", str(image), "--labels", "cat", "--out", str(tmp_path / "o"), "--checkpoint", str(tmp_path / "nope")],
        "unknown backbone": ["segment", str(image), "--labels", "cat", "--out", str(tmp_path / "o"), "--backbone", "ViT-Q-99"],
        "cannot write to output folder": ["segment", str(image), "--labels", "cat", "--out", str(blocker / "sub"), *TINY],
        "neither an existing file nor a tag": ["info", "--backbone", "ViT-B-16", "--pretrained", "no_such_tag"],
        "1 <= --show <= --scenes": ["demo", "--out", str(tmp_path / "d"), "--scenes", "2", "--show", "3"],
        "--seeds must be comma-separated integers": ["world", "--out", str(tmp_path / "w"), "--seeds", ""],
        "at least one seed and one variant": ["world", "--out", str(tmp_path / "w"), "--config", str(no_variants)],
    }
    for message, argv in cases.items():
        result = synseg(*argv)
        assert result.returncode == 2, (message, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr, (message, result.stderr)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_demo_scores_the_shipped_model_and_every_training_free_method_and_draws_it(tmp_path):
    """The README's first command: the shipped world checkpoint segments new scenes, offline, beside every training-free
    method on the same CLIP. The shipped model segments with region verification (the default recipe's), so its row
    beside the decoder alone is `SynSeg (unverified)`; a broken shipped model (or one no better than MaskCLIP or the
    readout it starts from) fails on seen things."""
    from synseg.methods import REGISTRY, list_methods

    assert main(["demo", "--out", str(tmp_path), "--scenes", "12", "--show", "2"]) == 0
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert {f"{REGISTRY[name].title} (training-free, same CLIP)" for name in list_methods("training-free")} < set(scores)
    assert {"SynSeg (unverified)", "CLS readout + region verification (training-free, same CLIP)"} < set(scores)
    synseg, maskclip = scores["SynSeg"], scores["MaskCLIP (training-free, same CLIP)"]
    assert synseg["seen"] > maskclip["seen"] + 10 and synseg["stuff"] > maskclip["stuff"] + 10, scores
    assert synseg["seen"] > scores["CLS readout (training-free, same CLIP)"]["seen"], scores
    assert synseg["things"] > scores["Chance (uniform random labels)"]["things"] + 15, scores
    with Image.open(tmp_path / "demo.png") as figure:
        assert figure.width > 900 and figure.height > 400  # two rows of image | truth | SynSeg | a baseline + legend


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    image = tmp_path / "x.png"
    Image.new("RGB", (20, 20)).save(image)
    result = synseg("segment", str(image), "--labels", "cat", "--out", str(locked), *TINY)
    assert result.returncode == 2 and "cannot write" in result.stderr
