"""A corpus of bad and unusual inputs run against every command: each must end in one error line and exit code 2, or
in correct output; never a traceback, a hang, a wrong success or a half-written file.

Commands run in this process (a traceback fails the test by itself) except where a hang is the risk (training), which
runs in a subprocess under a timeout.
"""
from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from synseg.cli import main

TINY = ["--backbone", "synseg-tiny", "--pretrained", "none"]
TRAIN_CONFIG = {"model": {"backbone": {"name": "synseg-tiny", "pretrained": None}, "decoder": {"ffn_dim": 32}},
                "batch_size": 2, "max_phrases": 2, "workers": 0, "warmup": 1, "iterations": 2, "log_every": 1}


def answer(capsys, argv: list[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def assert_error(code: int, err: str, command: str, message: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (message, err)
    assert lines and lines[-1].startswith(f"synseg {command}: error: ") and message in lines[-1], (message, err)
    assert "Traceback" not in err


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG of ~100 bytes declaring width x height pixels (its image data is a few bytes of an unfinished stream)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)[:20])
                     + chunk(b"IEND", b""))


def rgb(height: int = 24, width: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)


# -- images ---------------------------------------------------------------------------------------------------------
def _jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb(64, 64)).save(buffer, format="JPEG")
    return buffer.getvalue()


BAD_IMAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "random bytes": (lambda p: p.write_bytes(os.urandom(300)), "not a readable image"),
    "truncated jpeg": (lambda p: p.write_bytes(_jpeg_bytes()[:400]), "not a readable image"),
    "empty file": (lambda p: p.write_bytes(b""), "not a readable image"),
    "text named .png": (lambda p: p.write_text("hello"), "not a readable image"),
    "huge by header": (lambda p: png_header_only(p, 30000, 30000), "above synseg's limit"),
    "9 GB by header": (lambda p: png_header_only(p, 9000, 9000), "above synseg's limit"),
}


@pytest.mark.parametrize("case", BAD_IMAGES)
def test_bad_images(case, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SYNSEG_MAX_PIXELS", "40000000")
    make, message = BAD_IMAGES[case]
    path = tmp_path / ("x.jpg" if "jpeg" in case else "x.png")
    make(path)
    Image.fromarray(rgb()).save(tmp_path / "good.png")  # segmented first if the bad one were found only on its turn
    assert_error(*answer(capsys, ["segment", str(tmp_path / "good.png"), str(path), "--labels", "cat", "--out",
                                  str(tmp_path / "o"), *TINY]), "segment", message)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def _unusual_images(folder: Path) -> dict[str, tuple[int, int]]:
    """Readable images in unusual forms, and the (width, height) a label map of each must have."""
    array = rgb()
    Image.fromarray((array[..., 0].astype(np.uint16) * 257)).save(folder / "i16.png")
    Image.fromarray(array[..., 0].astype(np.float32) / 255).save(folder / "float.tiff")
    Image.fromarray(array).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(np.dstack([array[..., 0], array[..., 1]])).save(folder / "la.png")
    Image.fromarray(array).convert("1").save(folder / "bilevel.png")
    frames = [Image.fromarray(rgb(seed=s)) for s in range(3)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    frames[0].save(folder / "pages.tiff", save_all=True, append_images=frames[1:])
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated by 90 degrees
    Image.fromarray(array).save(folder / "rotated.jpg", exif=exif)
    Image.fromarray(array[:1, :1]).save(folder / "one_pixel.png")
    Image.fromarray(array[:1]).save(folder / "one_row.png")
    return {"i16": (40, 24), "float": (40, 24), "cmyk": (40, 24), "la": (40, 24), "bilevel": (40, 24),
            "animated": (40, 24), "pages": (40, 24), "rotated": (24, 40), "one_pixel": (1, 1), "one_row": (40, 1)}


def test_unusual_images_are_segmented_at_their_shown_size(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    sizes = _unusual_images(folder)
    out = tmp_path / "out"
    code, err = answer(capsys, ["segment", *map(str, sorted(folder.iterdir())), "--labels", "cat, dog", "--out",
                                str(out), *TINY])
    assert code == 0, err
    for stem, size in sizes.items():
        with Image.open(out / f"{stem}.png") as label_map:
            assert label_map.size == size, stem
        with Image.open(out / f"{stem}.heat.cat.png") as heat:
            assert heat.size == size, stem


# -- output paths ---------------------------------------------------------------------------------------------------
SEGMENT_OUTPUTS = ["x.png", "x.overlay.png", "x.heat.cat.png", "labels.json", "manifest.json"]


@pytest.mark.parametrize("name", SEGMENT_OUTPUTS)
@pytest.mark.parametrize("blocker", ["folder", "fifo"])
def test_any_segment_output_taken_by_a_folder_or_fifo_stops_before_writing_anything(name, blocker, tmp_path, capsys):
    Image.fromarray(rgb()).save(tmp_path / "x.png")
    out = tmp_path / "o"
    out.mkdir()
    os.mkfifo(out / name) if blocker == "fifo" else (out / name).mkdir()
    message = "it is a folder" if blocker == "folder" else "something other than a file"
    assert_error(*answer(capsys, ["segment", str(tmp_path / "x.png"), "--labels", "cat", "--out", str(out), "--protocol", "whole",
                                  *TINY]), "segment", message)
    assert [p.name for p in out.iterdir()] == [name]


def test_every_command_refuses_an_output_file_that_is_a_folder(tmp_path, capsys, train_data):
    root, preds = tmp_path / "bench", tmp_path / "preds"
    _predictions(preds, _folder_benchmark(root, ["cat", "dog", "sky"]))
    taken = tmp_path / "taken.png"
    taken.mkdir()
    commands = {
        "eval": ["--benchmark", "folder", "--root", str(root), "--predictions", str(preds), "--json", str(taken)],
        "viz": ["overlay", str(root / "JPEGImages" / "a.jpg"), "--labels", "cat", "--out", str(taken), *TINY],
        "bench": [*TINY, "--method", "synseg", "--json", str(taken)],
    }
    for command, argv in commands.items():
        assert_error(*answer(capsys, [command, *argv]), command, "is a folder")
    voc = tmp_path / "raw" / "VOCdevkit" / "VOC2012"  # prepare: a folder where its second label goes
    _folder_benchmark(voc, ["background", "cat"])
    (tmp_path / "prepared" / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "b.png").mkdir(parents=True)
    assert_error(*answer(capsys, ["prepare", "voc", "--from", str(tmp_path / "raw"), "--out", str(tmp_path / "prepared"),
                                  "--split", "val"]), "prepare", "is a folder")
    assert not [path for path in (tmp_path / "prepared").rglob("*") if not path.is_dir()]  # no file written
    out = tmp_path / "run"
    (out / "log.jsonl").mkdir(parents=True)
    assert_error(*answer(capsys, _train(*train_data, out, TRAIN_CONFIG)), "train", "is a folder")
    (out / "log.jsonl").rmdir()
    (out / "final").write_text("")
    assert_error(*answer(capsys, _train(*train_data, out, TRAIN_CONFIG)), "train", "a file of that name is in the way")
    assert sorted(p.name for p in out.iterdir()) == ["final"]


# -- input names ----------------------------------------------------------------------------------------------------
def test_image_names_are_kept_and_the_manifest_maps_each_image_to_its_files(tmp_path, capsys):
    inputs = ["café photo ü.jpg", "a/x.png", "b/x.png", "x.jpg", "x.overlay.png", "line\nbreak.png"]
    for name in inputs:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.fromarray(rgb()).save(tmp_path / name)
    out = tmp_path / "o"
    code, err = answer(capsys, ["segment", *(str(tmp_path / n) for n in inputs), str(tmp_path / "x.jpg"),
                                "--labels", "cat, big dog", "--out", str(out), "--protocol", "whole", *TINY])
    assert code == 0, err
    images = json.loads((out / "manifest.json").read_text(encoding="utf-8"))["images"]
    assert [entry["image"] for entry in images] == [str(tmp_path / n) for n in inputs]  # the repeated x.jpg once
    first = images[0]
    assert first["label_map"] == "café photo ü.png" and first["heat_maps"]["big dog"] == "café photo ü.heat.big dog.png"
    written = [name for entry in images for name in [entry["label_map"], entry["overlay"], *entry["heat_maps"].values()]]
    assert len(set(written)) == len(written) == 4 * len(inputs)
    assert sorted(written + ["labels.json", "manifest.json"]) == sorted(p.name for p in out.iterdir())
    clashing = [entry["label_map"] for entry in images[1:]]
    assert all(name.startswith(("x-", "x.overlay-", "line_break-")) for name in clashing), clashing


# -- labels ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("labels, message", [("", "non-empty"), (" , ", "non-empty"), ("cat,,dog", "non-empty"),
                                             ("cat, dog, cat", "duplicate label")])
def test_bad_label_lists(labels, message, tmp_path, capsys):
    Image.fromarray(rgb()).save(tmp_path / "x.png")
    assert_error(*answer(capsys, ["segment", str(tmp_path / "x.png"), "--labels", labels, "--out", str(tmp_path / "o"),
                                  *TINY]), "segment", message)


def test_labels_whose_file_names_would_collide_or_overflow_get_files_of_their_own(tmp_path, capsys):
    Image.fromarray(rgb()).save(tmp_path / "x.png")
    labels = ["a/b", "a b", "Cat", "cat", "猫", "🐶 dog", "x" * 3000, "line\nbreak", "..", "{}"]
    out = tmp_path / "o"
    code, err = answer(capsys, ["segment", str(tmp_path / "x.png"), "--labels", ",".join(labels), "--out", str(out),
                                "--protocol", "whole", *TINY])
    assert code == 0, err
    files = json.loads((out / "labels.json").read_text())["files"]["heat_maps"]
    assert list(files) == labels
    names = [f"x.heat.{part}.png" for part in files.values()]
    assert len({name.casefold() for name in names}) == len(labels)  # distinct even on a case-insensitive disk
    assert all(len(name.encode()) < 256 and "/" not in name for name in names)
    assert all((out / name).is_file() for name in names)
    assert [files[label] for label in ("a b", "猫", "🐶 dog", "{}")] == ["a b", "猫", "🐶 dog", "{}"]  # names kept


def test_more_labels_than_a_palette_holds_give_a_16_bit_label_map(tmp_path, capsys):
    from synseg.models import BackboneConfig, SynSegConfig, build_synseg
    from synseg.predictor import Segmenter

    image = Image.fromarray(rgb())
    image.save(tmp_path / "x.png")
    labels = [f"thing {i}" for i in range(300)]
    out = tmp_path / "o"
    torch.manual_seed(0)
    code, err = answer(capsys, ["segment", str(tmp_path / "x.png"), "--labels", ",".join(labels), "--out", str(out),
                                "--protocol", "whole", "--device", "cpu", *TINY])
    assert code == 0, err
    with Image.open(out / "x.png") as label_map:
        assert label_map.mode.startswith("I") and label_map.size == (40, 24)
        written = np.asarray(label_map).astype(np.int64)
    torch.manual_seed(0)  # the model the command built
    model = build_synseg(SynSegConfig(backbone=BackboneConfig("synseg-tiny", None))).eval()
    expected = Segmenter(model, "whole").segment(image, labels).label_map
    assert np.array_equal(written, expected)
    assert len(json.loads((out / "labels.json").read_text())["classes"]) == 300
    assert (out / "x.overlay.png").is_file()


def test_label_map_png_keeps_indices_past_a_palette():
    from synseg.render import label_map_image

    indices = np.array([[0, 255], [256, 299]])
    buffer = io.BytesIO()
    label_map_image(indices, 300).save(buffer, format="PNG")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(buffer.getvalue()))).astype(np.int64), indices)


# -- checkpoints ----------------------------------------------------------------------------------------------------
@pytest.fixture
def checkpoint(tmp_path, tiny_model) -> Path:
    from synseg.checkpoint import save_model

    return save_model(tiny_model, tmp_path / "ckpt")


def _edit_config(folder: Path, change: Callable[[dict], None]) -> None:
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))


def _pickle_weights(folder: Path) -> None:
    torch.save({"x": torch.zeros(2)}, folder / "model.safetensors")


def _extra_tensor(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(str(folder / "model.safetensors"))
    save_file({**weights, "decoder.extra": torch.zeros(1)}, str(folder / "model.safetensors"))


BAD_CHECKPOINTS: dict[str, tuple[Callable[[Path], object], str]] = {
    "missing": (lambda f: __import__("shutil").rmtree(f), "checkpoint not found"),
    "no config": (lambda f: (f / "config.json").unlink(), "is not a synseg checkpoint"),
    "random weights file": (lambda f: (f / "model.safetensors").write_bytes(os.urandom(500)), "not a readable safetensors"),
    "truncated weights": (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:999]),
                          "not a readable safetensors"),
    "pickle": (_pickle_weights, "not a readable safetensors"),
    "extra tensor": (_extra_tensor, "weights do not match"),
    "wrong shapes": (lambda f: _edit_config(f, lambda c: c["decoder"].update(reduce_dim=32)), "has shape"),
    "unknown key": (lambda f: _edit_config(f, lambda c: c.update(colour="red")), "unknown key(s) colour"),
    "wrong type": (lambda f: _edit_config(f, lambda c: c["decoder"].update(heads="4")), "expected an integer"),
    "out of range": (lambda f: _edit_config(f, lambda c: c.update(background_threshold=7)), "background_threshold"),
    "bad template": (lambda f: _edit_config(f, lambda c: c.update(templates=["no slot"])), "templates"),
    "not json": (lambda f: (f / "config.json").write_text("{oops"), "not valid JSON"),
    "a list": (lambda f: (f / "config.json").write_text("[]"), "expected an object"),
}


@pytest.mark.parametrize("case", BAD_CHECKPOINTS)
def test_bad_checkpoints(case, checkpoint, tmp_path, capsys):
    damage, message = BAD_CHECKPOINTS[case]
    damage(checkpoint)
    Image.fromarray(rgb()).save(tmp_path / "x.png")
    assert_error(*answer(capsys, ["segment", str(tmp_path / "x.png"), "--labels", "cat", "--out", str(tmp_path / "o"),
                                  "--checkpoint", str(checkpoint), "--pretrained", "none"]), "segment", message)
    assert_error(*answer(capsys, ["info", "--checkpoint", str(checkpoint)]), "info", message)


def _clip_weights(path: Path, change: Callable[[dict], dict]) -> None:
    from safetensors.torch import save_file

    from synseg.models.backbone import BackboneConfig, ClipBackbone

    torch.manual_seed(0)
    save_file(change(ClipBackbone(BackboneConfig("synseg-tiny", None)).clip.state_dict()), str(path))


BAD_WEIGHTS: dict[str, Callable[[Path], object]] = {
    "random bytes": lambda p: p.write_bytes(os.urandom(700)),
    "empty": lambda p: p.write_bytes(b""),
    "damaged safetensors header": lambda p: p.write_bytes(struct.pack("<Q", 60) + b'{"a": {"dtype": "F32", "shape"' + b"x" * 40),
    "header longer than the file": lambda p: p.write_bytes(struct.pack("<Q", 10**9) + b"{}"),
    "cut safetensors": lambda p: (_clip_weights(p, dict), p.write_bytes(p.read_bytes()[:3000])),
    "other model's tensors": lambda p: _clip_weights(p, lambda w: {k: (v[..., :1] if v.ndim else v).contiguous() for k, v in w.items()}),
    "tensors missing": lambda p: _clip_weights(p, lambda w: dict(list(w.items())[:3])),
    "pickled list": lambda p: torch.save([torch.zeros(2)], p),
    "pickled object": lambda p: p.write_bytes(__import__("pickle").dumps(Path("x"))),
}


@pytest.mark.parametrize("case", BAD_WEIGHTS)
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_pretrained_files_that_are_not_clip_weights(case, suffix, tmp_path, capsys):
    weights = tmp_path / f"w{suffix}"
    BAD_WEIGHTS[case](weights)
    Image.fromarray(rgb()).save(tmp_path / "x.png")
    assert_error(*answer(capsys, ["segment", str(tmp_path / "x.png"), "--labels", "cat", "--out", str(tmp_path / "o"),
                                  "--method", "maskclip", "--backbone", "synseg-tiny", "--pretrained", str(weights)]),
                 "segment", "is not CLIP weights for synseg-tiny")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_pretrained_file_of_clip_weights_is_loaded(tmp_path, capsys):
    from safetensors.torch import load_file

    from synseg.models.backbone import BackboneConfig, ClipBackbone

    _clip_weights(tmp_path / "w.safetensors", dict)
    loaded = ClipBackbone(BackboneConfig("synseg-tiny", str(tmp_path / "w.safetensors"))).clip.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in load_file(str(tmp_path / "w.safetensors")).items())


# -- JSON of the wrong shape, text with a byte-order mark or in another encoding ------------------------------------
@pytest.mark.parametrize("text, message", [("[]", "got a list"), ('"synseg-tiny"', "got a string"), ("7", "got a number"),
                                           ("null", "got null"), ('{"model": []}', "expected an object"),
                                           ('{"loss": 1}', "expected an object"), ('{"model": {"decoder": "x"}}', "expected an object")])
def test_config_json_whose_parts_have_the_wrong_type(text, message, train_data, tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(text)
    argv = ["train", "--data", str(train_data[0]), "--phrases", str(train_data[1]), "--out", str(tmp_path / "r"),
            "--config", str(config)]
    assert_error(*answer(capsys, argv), "train", message)
    assert_error(*answer(capsys, ["info", "--backbone", str(config), "--pretrained", "none"]), "info",
                 message if text.startswith(("[", '"', "7", "n")) else "is not an open_clip architecture")


ENCODINGS = {"UTF-8 with BOM": "utf-8-sig", "UTF-16": "utf-16", "UTF-32": "utf-32"}


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_text_inputs_with_a_byte_order_mark_are_read_whole(encoding, train_data, tmp_path, capsys):
    codec = ENCODINGS[encoding]
    config = tmp_path / "c.json"
    config.write_text(json.dumps({**TRAIN_CONFIG, "iterations": 1}), encoding=codec)
    root, preds = tmp_path / "bench", tmp_path / "preds"
    _predictions(preds, _folder_benchmark(root, ["background", "café", "dog"]))
    (root / "classes.txt").write_text("background\ncafé\ndog\n", encoding=codec)
    (root / "ImageSets/Segmentation/val.txt").write_text("a\nb\n", encoding=codec)
    code, err = answer(capsys, ["eval", "--benchmark", "folder", "--root", str(root), "--predictions", str(preds),
                                "--json", str(tmp_path / "r.json")])
    assert code == 0, err
    result = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))["results"][0]
    assert result["miou"] == 100.0 and "café" in result["per_class_iou"] and result["images"] == 2
    data, phrases = train_data
    if codec == "utf-8-sig":  # line readers keep byte offsets: a UTF-8 BOM is skipped, UTF-16/32 is an error
        phrases.write_bytes(b"\xef\xbb\xbf" + phrases.read_bytes())
        code, err = answer(capsys, _train(data, phrases, tmp_path / "run", None, "--config", str(config)))
        assert code == 0, err
    else:
        phrases.write_text(phrases.read_text(), encoding=codec)
        assert_error(*answer(capsys, _train(data, phrases, tmp_path / "run", None, "--config", str(config))), "train",
                     f"is {encoding} text: save it as UTF-8")


def test_text_not_in_utf8_is_one_line_naming_the_line(tmp_path, capsys):
    root, preds = tmp_path / "bench", tmp_path / "preds"
    _predictions(preds, _folder_benchmark(root, ["background", "cat", "dog"]))
    (root / "classes.txt").write_bytes("background\ncafé\ndog\n".encode("latin-1"))
    assert_error(*answer(capsys, ["eval", "--benchmark", "folder", "--root", str(root), "--predictions", str(preds)]),
                 "eval", "is not UTF-8 text (line 2)")


# -- benchmark layouts ----------------------------------------------------------------------------------------------
def _folder_benchmark(root: Path, classes: list[str], stems=("a", "b")) -> dict[str, np.ndarray]:
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(stems) + "\n")
    labels = {}
    for i, stem in enumerate(stems):
        Image.fromarray(rgb(seed=i)).save(root / "JPEGImages" / f"{stem}.jpg")
        labels[stem] = np.random.default_rng(i).integers(0, len(classes), (24, 40)).astype(np.uint8)
        Image.fromarray(labels[stem]).save(root / "SegmentationClass" / f"{stem}.png")
    return labels


def _predictions(folder: Path, labels: dict[str, np.ndarray]) -> None:
    folder.mkdir(exist_ok=True)
    for stem, label in labels.items():
        Image.fromarray(label).save(folder / f"{stem}.png")


def _layout_case(name: str, root: Path, preds: Path) -> None:
    labels = _folder_benchmark(root, ["cat", "dog", "sky"])
    _predictions(preds, labels)
    if name == "no split list":
        (root / "ImageSets/Segmentation/val.txt").unlink()
    elif name == "listed image missing":
        (root / "JPEGImages/b.jpg").unlink()
    elif name == "empty split":
        (root / "ImageSets/Segmentation/val.txt").write_text("\n")
    elif name == "label out of range":
        Image.fromarray(np.full((24, 40), 7, np.uint8)).save(root / "SegmentationClass/a.png")
    elif name == "rgb label":
        Image.fromarray(rgb()).save(root / "SegmentationClass/a.png")
    elif name == "prediction missing":
        (preds / "b.png").unlink()
    elif name == "prediction wrongly sized":
        Image.fromarray(labels["a"][:10]).save(preds / "a.png")
    elif name == "prediction in colour":
        Image.fromarray(rgb()).save(preds / "a.png")
    elif name == "prediction out of range":
        Image.fromarray(np.full((24, 40), 9, np.uint8)).save(preds / "a.png")
    elif name == "classes not utf-8":
        (root / "classes.txt").write_bytes(b"caf\xe9\ndog\nsky\n")
    elif name == "too many classes":
        (root / "classes.txt").write_text("\n".join(f"c{i}" for i in range(300)))
    elif name == "split list not utf-8":
        (root / "ImageSets/Segmentation/val.txt").write_bytes(b"a\n\xff\xfe\n")


LAYOUTS = {
    "no split list": "missing", "listed image missing": "images listed in val.txt but missing",
    "empty split": "no image/label pairs", "label out of range": "ground truth", "rgb label": "single-channel",
    "prediction missing": "predictions missing", "prediction wrongly sized": "but its label",
    "prediction in colour": "single-channel", "prediction out of range": "prediction",
    "classes not utf-8": "UTF-8", "too many classes": "at most 254 classes", "split list not utf-8": "UTF-8",
}


@pytest.mark.parametrize("case", LAYOUTS)
def test_bad_benchmark_layouts(case, tmp_path, capsys):
    root, preds = tmp_path / "bench", tmp_path / "preds"
    _layout_case(case, root, preds)
    json_out = tmp_path / "r.json"
    assert_error(*answer(capsys, ["eval", "--benchmark", "folder", "--root", str(root), "--predictions", str(preds),
                                  "--json", str(json_out)]), "eval", LAYOUTS[case])
    assert not json_out.exists()


def test_good_layout_scores_its_own_labels_100_and_a_model_runs_on_it(tmp_path, capsys, checkpoint):
    root, preds = tmp_path / "bench", tmp_path / "preds"
    _predictions(preds, _folder_benchmark(root, ["background", "cat", "dog"]))
    code, err = answer(capsys, ["eval", "--benchmark", "folder", "--root", str(root), "--predictions", str(preds),
                                "--json", str(tmp_path / "r.json")])
    assert code == 0, err
    assert json.loads((tmp_path / "r.json").read_text())["results"][0]["miou"] == 100.0
    code, err = answer(capsys, ["eval", "--benchmark", "folder", "--root", str(root), "--checkpoint", str(checkpoint),
                                "--pretrained", "none", "--protocol", "whole"])
    assert code == 0, err


# -- captions and shards (phrases) ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def spacy_ready():
    pytest.importorskip("spacy", reason="phrases need spaCy: pip install 'synseg[train]'")
    pytest.importorskip("webdataset", reason="tar shards need webdataset: pip install 'synseg[train]'")
    from synseg.data.phrases import load_spacy
    from synseg.errors import UserError

    try:
        load_spacy()
    except UserError as error:
        pytest.skip(str(error))


def _shard(path: Path, samples: dict[str, dict[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, files in samples.items():
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_phrases_survive_malformed_lines_bad_encodings_and_damaged_shards(spacy_ready, tmp_path, capsys):
    folder = tmp_path / "jsonl"
    folder.mkdir()
    Image.fromarray(rgb()).save(folder / "a.jpg")
    lines = [b'{"image": "a.jpg", "caption": "a dog on a sofa"}', b"{not json", b"[1, 2]", b'{"image": 5}',
             b'{"image": "a.jpg", "caption": "caf\xe9 table"}', b'{"image": "b.jpg", "captions": [3, null]}']
    (folder / "captions.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    code, err = answer(capsys, ["phrases", str(folder), "--out", str(tmp_path / "p.jsonl")])
    assert code == 0, err
    records = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["phrases"] for r in records] == [["dog", "sofa"]]  # the duplicate key "a.jpg" is dropped
    assert "unreadable record: 3" in err

    shard = tmp_path / "s.tar"
    _shard(shard, {f"{i:03d}": {"jpg": _jpeg_bytes(), "txt": "a red car".encode()} for i in range(4)})
    data = shard.read_bytes()
    with tarfile.open(shard) as tar:  # cut inside 002.jpg: 000 and 001 are whole, 002 is cut, 003 is gone
        image = tar.getmember("002.jpg")
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "s.tar").write_bytes(data[: image.offset_data + image.size // 2])
    code, err = answer(capsys, ["phrases", str(tmp_path / "cut" / "s.tar"), "--out", str(tmp_path / "q.jsonl")])
    assert code == 0, err
    assert [json.loads(line)["key"] for line in (tmp_path / "q.jsonl").read_text().splitlines()] == ["000", "001"]
    assert "damaged shards, read up to the damage: 1 (s.tar)" in err


@pytest.mark.parametrize("case, message", [("nothing usable", "no sample"), ("not a tar", "no sample"),
                                           ("out is a folder", "is a folder"), ("missing input", "input not found")])
def test_phrases_that_cannot_give_any_output(spacy_ready, case, message, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    source, out = str(folder), tmp_path / "p.jsonl"
    if case == "nothing usable":
        (folder / "c.jsonl").write_bytes(b"{bad\n\xff\xfe\n")
    elif case == "not a tar":
        (folder / "x.tar").write_bytes(os.urandom(2000))
    elif case == "out is a folder":
        (folder / "c.jsonl").write_text('{"image": "a.jpg", "caption": "a dog"}\n')
        Image.fromarray(rgb()).save(folder / "a.jpg")
        out.mkdir()
    else:
        source = str(tmp_path / "nowhere")
    assert_error(*answer(capsys, ["phrases", source, "--out", str(out)]), "phrases", message)
    assert not out.is_file()


# -- training -------------------------------------------------------------------------------------------------------
@pytest.fixture
def train_data(tmp_path) -> tuple[Path, Path]:
    """A jsonl folder of 6 images and its PHRASES.jsonl, written by hand (no spaCy needed)."""
    folder = tmp_path / "data"
    folder.mkdir()
    lines, phrases = [], []
    for i in range(6):
        Image.fromarray(rgb(seed=i)).save(folder / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "caption": "a cat on a mat"}))
        phrases.append(json.dumps({"key": f"{i}.png", "image": f"{i}.png", "captions": ["a cat on a mat"],
                                   "phrases": ["cat", "mat"], "heads": ["cat", "mat"]}))
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "phrases.jsonl").write_text("\n".join(phrases) + "\n")
    return folder, tmp_path / "phrases.jsonl"


def _train(data: Path, phrases: Path, out: Path, config: dict | None, *extra: str) -> list[str]:
    argv = ["train", "--data", str(data), "--phrases", str(phrases), "--out", str(out), "--device", "cpu", *extra]
    if config is not None:
        path = out.parent / f"{out.name}.config.json"
        path.write_text(json.dumps(config))
        argv += ["--config", str(path)]
    return argv


CONFIGS = {
    "batch size as text": ({"batch_size": "2"}, "expected an integer"),
    "negative learning rate": ({"lr": -1}, "lr must be"),
    "no iterations": ({"iterations": 0}, "iterations must be"),
    "workers below zero": ({"workers": -2}, "workers must be"),
    "unknown resize": ({"resize": "zoom"}, "resize must be"),
    "template without slot": ({"phrase_templates": ["a photo"]}, "phrase_templates"),
    "odd heads": ({"model": {**TRAIN_CONFIG["model"], "decoder": {"reduce_dim": 10}}}, "multiple of heads"),
    "boolean weight": ({"loss": {"intra_align": True}}, "expected a number"),
    "unknown loss key": ({"loss": {"l5": 1}}, "unknown key(s) l5"),
    "nan learning rate": ({"lr": float("nan")}, "lr must be"),
    "huge seed": ({"seed": 2**40}, "seed must be"),
}


@pytest.mark.parametrize("case", CONFIGS)
def test_nonsense_training_configs(case, train_data, tmp_path, capsys):
    change, message = CONFIGS[case]
    out = tmp_path / "run"
    assert_error(*answer(capsys, _train(*train_data, out, {**TRAIN_CONFIG, **change})), "train", message)
    assert not out.exists()


def _write_phrases(path: Path, lines: list[object]) -> None:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))


@pytest.mark.parametrize("case, lines, message", [
    ("phrases as one string", [{"key": "0.png", "image": "0.png", "phrases": "cat"}], "not a PHRASES.jsonl line"),
    ("no key", [{"image": "0.png", "phrases": ["cat"]}], "not a PHRASES.jsonl line"),
    ("phrase not text", [{"key": "0.png", "image": "0.png", "phrases": [["cat"]]}], "not a PHRASES.jsonl line"),
    ("cut line", ['{"key": "0.png", "image": "0.p'], "not a PHRASES.jsonl line"),
    ("empty file", [], "cannot feed"),
])
def test_bad_phrases_files(case, lines, message, train_data, tmp_path, capsys):
    data, phrases = train_data
    _write_phrases(phrases, lines)
    assert_error(*answer(capsys, _train(data, phrases, tmp_path / "run", TRAIN_CONFIG)), "train", message)


def test_training_outputs_checked_before_any_work(train_data, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_error(*answer(capsys, _train(*train_data, blocker, TRAIN_CONFIG)), "train", "cannot write to output folder")
    assert_error(*answer(capsys, _train(*train_data, tmp_path / "run", TRAIN_CONFIG, "--cache", str(blocker / "c"))),
                 "train", "cannot write to output folder")


def test_damaged_resume_state_and_existing_run(train_data, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = answer(capsys, _train(*train_data, out, TRAIN_CONFIG))
    assert code == 0, err
    assert_error(*answer(capsys, _train(*train_data, out, TRAIN_CONFIG)), "train", "--resume")
    state = out / "last" / "train_state.pt"
    for damage in (os.urandom(300), state.read_bytes()[:200]):
        state.write_bytes(damage)
        assert_error(*answer(capsys, _train(*train_data, out, TRAIN_CONFIG, "--resume")), "train", "is damaged")
    (out / "log.jsonl").write_text('{"step": 1}\n{"step": 2, "lo')  # a line cut by a kill
    torch.save({"not": "a state"}, state)
    assert_error(*answer(capsys, _train(*train_data, out, TRAIN_CONFIG, "--resume")), "train", "is damaged")


def test_training_on_unreadable_images_stops_with_an_error(train_data, tmp_path):
    data, phrases = train_data
    for image in data.glob("*.png"):
        image.write_bytes(b"not an image")
    argv = _train(data, phrases, tmp_path / "run", {**TRAIN_CONFIG, "iterations": 5})
    result = subprocess.run([sys.executable, "-m", "synseg.cli", *argv], capture_output=True, text=True, timeout=240)
    assert_error(result.returncode, result.stderr, "train", "no usable image")
    assert not (tmp_path / "run" / "final").exists()


# -- bench and info -------------------------------------------------------------------------------------------------
def test_bench_refuses_sizes_and_outputs_before_measuring(tmp_path, capsys):
    assert_error(*answer(capsys, ["bench", *TINY, "--image-size", "100000x100000", "--method", "synseg"]), "bench",
                 "above synseg's limit")
    (tmp_path / "dir").mkdir()
    assert_error(*answer(capsys, ["bench", *TINY, "--method", "synseg", "--json", str(tmp_path / "dir")]), "bench",
                 "is a folder")
