"""`synseg eval` end to end: exact scores for known predictions, agreement with an independent computation on a
full-size split, one-line errors, and the SynSeg and MaskCLIP paths on the real samples with a tiny backbone."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synseg.cli import main
from synseg.data.benchmarks import BENCHMARKS, get_benchmark

TINY = ["--backbone", "synseg-tiny", "--pretrained", "none"]


def run_eval(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["eval", *args])
    out, err = capsys.readouterr()
    return code, out, err


def write_png(path: Path, array: np.ndarray, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array.astype(np.uint8))
    (image.convert("P") if mode == "P" else image).save(path)


def ground_truth_predictions(root: Path, name: str, folder: Path) -> dict[str, np.ndarray]:
    """Write each label, decoded to class indices, as a prediction; return them by stem."""
    benchmark = get_benchmark(name, root)
    labels = {s.stem: benchmark.read_label(s.label_path) for s in benchmark.samples}
    for stem, label in labels.items():
        write_png(folder / f"{stem}.png", label, "P" if name == "voc" else "L")
    return labels


def test_ground_truth_scores_100(real_data, tmp_path, capsys):
    present = {name: ground_truth_predictions(real_data, name, tmp_path / "preds" / name) for name in ("voc", "ade", "city")}
    code, out, _ = run_eval(capsys, "--benchmark", "ade,voc,city", "--root", str(real_data), "--predictions",
                            str(tmp_path / "preds"), "--json", str(tmp_path / "r.json"))
    assert code == 0
    assert out.splitlines() == ["| Method | VOC | City | ADE | Avg. |", "|---|---|---|---|---|",
                                "| preds | 100.0 | 100.0 | 100.0 | 100.0 |"]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["table"] == out.strip()
    for result in report["results"]:
        labels = present[result["benchmark"]]
        seen = set(np.unique(np.concatenate([label.ravel() for label in labels.values()]))) - {255}
        names = BENCHMARKS[result["benchmark"]].class_names()
        assert result["miou"] == 100.0 and result["pixel_accuracy"] == 100.0 and result["images"] == len(labels)
        assert result["per_class_iou"] == {n: (100.0 if i in seen else None) for i, n in enumerate(names)}


def test_known_perturbation_scores_the_hand_computed_value(real_data, tmp_path, capsys):
    labels = ground_truth_predictions(real_data, "voc", tmp_path / "preds")
    first, second = "vainf_val_sample000", "vainf_val_sample008"
    assert set(np.unique(labels[first])) == {0, 1, 255} and set(np.unique(labels[second])) == {0, 13, 255}
    moved = int((labels[first] == 1).sum())  # aeroplane predicted as background in the first image
    unpredicted = int((labels[second] == 13).sum())  # dog left without prediction (255) in the second
    first_pred = np.where(labels[first] == 1, 0, labels[first])
    first_pred[labels[first] == 255] = 7  # predictions on ignored pixels are not scored
    write_png(tmp_path / "preds" / f"{first}.png", first_pred)
    write_png(tmp_path / "preds" / f"{second}.png", np.where(labels[second] == 13, 255, labels[second]))

    code, out, _ = run_eval(capsys, "--benchmark", "voc", "--root", str(real_data), "--predictions",
                            str(tmp_path / "preds"), "--json", str(tmp_path / "r.json"))
    assert code == 0
    everything = np.concatenate([label.ravel() for label in labels.values()])
    count = {c: int((everything == c).sum()) for c in set(np.unique(everything)) - {255}}
    expected = {c: 1.0 for c in count}
    expected[0] = count[0] / (count[0] + moved)
    expected[1] = (count[1] - moved) / count[1]
    expected[13] = (count[13] - unpredicted) / count[13]
    result = json.loads((tmp_path / "r.json").read_text())["results"][0]
    names = BENCHMARKS["voc"].class_names()
    assert result["per_class_iou"] == {n: (pytest.approx(100 * expected[i], abs=1e-12) if i in expected else None)
                                       for i, n in enumerate(names)}
    miou = 100 * sum(expected.values()) / len(expected)
    assert result["miou"] == pytest.approx(miou, abs=1e-12)
    assert result["pixel_accuracy"] == pytest.approx(100 * (1 - (moved + unpredicted) / sum(count.values())), abs=1e-12)
    assert f"| preds | {miou:.1f} | {miou:.1f} |" in out


def synthetic_split(root: Path, preds: Path, layout: str, images: int, rng: np.random.Generator) -> tuple[list, list]:
    """A full-size split in the VOC or ADE layout (500x375 labels), and perturbed predictions of it, in raw form."""
    truths, predictions = [], []
    stems = [f"{layout}_{i:05d}" for i in range(images)]
    if layout == "voc":
        base = root / "VOCdevkit" / "VOC2012"
        image_dir, label_dir = base / "JPEGImages", base / "SegmentationClass"
        (base / "ImageSets" / "Segmentation").mkdir(parents=True)
        (base / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(stems) + "\n")
    else:
        base = root / "ADEChallengeData2016"
        image_dir, label_dir = base / "images" / "validation", base / "annotations" / "validation"
    image_dir.mkdir(parents=True)
    classes = 21 if layout == "voc" else 150
    for stem in stems:
        blocks = rng.integers(0, classes + (layout == "ade"), size=(15, 20))  # ADE raw labels are 0..150
        truth = np.kron(blocks, np.ones((25, 25), dtype=np.int64))  # 375 x 500, object-like regions
        if layout == "voc":
            truth[rng.random(truth.shape) < 0.05] = 255
        prediction = np.where(rng.random(truth.shape) < 0.7, truth - (layout == "ade"),
                              rng.integers(0, classes, size=truth.shape))
        prediction[(prediction < 0) | (prediction > classes - 1)] = 0
        prediction[rng.random(truth.shape) < 0.02] = 255
        Image.new("RGB", (500, 375)).save(image_dir / f"{stem}.jpg")
        write_png(label_dir / f"{stem}.png", truth)
        write_png(preds / layout / f"{stem}.png", prediction)
        truths.append(truth)
        predictions.append(prediction)
    return truths, predictions


def independent_iou(truths: list, predictions: list, classes: int, zero_is_ignored: bool) -> np.ndarray:
    """Per-class intersection and union sums over the split, straight from the raw label values."""
    truth = np.concatenate([t.ravel() for t in truths]).astype(np.int64)
    prediction = np.concatenate([p.ravel() for p in predictions]).astype(np.int64)
    if zero_is_ignored:
        truth = np.where(truth == 0, 255, truth - 1)
    scored = truth != 255
    iou = []
    for c in range(classes):
        intersection = np.sum((truth == c) & (prediction == c))
        union = np.sum((truth == c) | ((prediction == c) & scored))
        iou.append(intersection / union if union else np.nan)
    return np.array(iou)


def test_full_size_split_agrees_with_independent_computation(tmp_path, capsys):
    rng = np.random.default_rng(7)
    root, preds = tmp_path / "data", tmp_path / "preds"
    splits = {"voc": synthetic_split(root, preds, "voc", 24, rng), "ade": synthetic_split(root, preds, "ade", 24, rng)}
    code, out, _ = run_eval(capsys, "--benchmark", "voc,ade", "--root", str(root), "--predictions", str(preds),
                            "--json", str(tmp_path / "r.json"))
    assert code == 0
    results = {r["benchmark"]: r for r in json.loads((tmp_path / "r.json").read_text())["results"]}
    for name, (truths, predictions) in splits.items():
        expected = independent_iou(truths, predictions, 21 if name == "voc" else 150, zero_is_ignored=name == "ade")
        got = np.array([np.nan if v is None else v / 100 for v in results[name]["per_class_iou"].values()])
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
        assert results[name]["miou"] / 100 == pytest.approx(np.nanmean(expected), abs=1e-6)
        assert results[name]["images"] == 24


def test_list_classes(capsys):
    code, out, _ = run_eval(capsys, "--benchmark", "voc", "--list-classes")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 21
    assert lines[0] == "0\tbackground" and lines[11] == "11\ttable" and lines[20] == "20\tmonitor"
    code, out, _ = run_eval(capsys, "--benchmark", "city,ade", "--list-classes")
    assert out.splitlines()[0] == "# city" and "# ade" in out and "149\tflag" in out


@pytest.fixture
def voc_predictions(real_data, tmp_path) -> Path:
    ground_truth_predictions(real_data, "voc", tmp_path / "preds")
    return tmp_path / "preds"


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / "vainf_val_sample001.png").unlink(), r"1 of 14 predictions missing in .*preds \(vainf_val_sample001.png\)"),
    (lambda p: write_png(p / "vainf_val_sample001.png", np.zeros((10, 12))),
     r"prediction .*vainf_val_sample001.png is 12x10 but its label .*vainf_val_sample001.png is 513x513"),
    (lambda p: Image.new("RGB", (513, 513)).save(p / "vainf_val_sample001.png"),
     r"prediction .*vainf_val_sample001.png is a RGB image; expected a single-channel PNG"),
    (lambda p: write_png(p / "vainf_val_sample001.png", np.full((513, 513), 21)),
     r"prediction .*preds/vainf_val_sample001.png has values outside 0..20 \(and 255\): 21"),
])
def test_bad_predictions_are_named(real_data, voc_predictions, capsys, damage, message):
    damage(voc_predictions)
    code, out, err = run_eval(capsys, "--benchmark", "voc", "--root", str(real_data), "--predictions", str(voc_predictions))
    last = err.splitlines()[-1]
    assert code == 2 and out == "" and err.endswith("\n")
    assert last.startswith("synseg eval: error: ") and re.search(message, last), err


def test_usage_errors(real_data, voc_predictions, tmp_path, capsys):
    voc = ["--benchmark", "voc", "--root", str(real_data)]
    cases = [
        ([*voc, "--predictions", str(voc_predictions), "--checkpoint", "x"], "--checkpoint runs a model; --predictions"),
        ([*voc, "--predictions", str(voc_predictions), "--threshold", "0.3"], "--threshold runs a model"),
        ([*voc, "--method", "synseg"], "--method synseg needs --checkpoint"),
        ([*voc, "--method", "maskclip,sam"], "unknown method 'sam'"),
        (["--benchmark", "voc,pascal", "--root", str(real_data)], "unknown benchmark 'pascal'"),
        (["--benchmark", "voc", "--predictions", str(voc_predictions)], "--root is required"),
        (["--benchmark", "voc,ade", "--root", str(real_data), "--predictions", str(voc_predictions)],
         "predictions go in one folder each"),
        (["--benchmark", "voc", "--root", str(tmp_path), "--predictions", str(voc_predictions)], "voc layout under"),
        ([*voc, "--predictions", str(voc_predictions), "--limit", "0"], "--limit must be at least 1"),
        ([*voc, "--method", "maskclip", "--threshold", "2"], "--threshold must be within [0, 1]"),
    ]
    for args, message in cases:
        code, out, err = run_eval(capsys, *args)
        assert code == 2 and out == "" and err.count("\n") == 1 and message in err, (args, err)


def test_limit_and_per_benchmark_roots(real_data, voc_predictions, tmp_path, capsys):
    (voc_predictions / "vainf_val_sample582.png").unlink()  # last in val.txt: not needed with --limit 3
    code, _, _ = run_eval(capsys, "--benchmark", "voc", "--root", str(tmp_path), "--root", f"voc={real_data}",
                          "--predictions", str(voc_predictions), "--limit", "3", "--json", str(tmp_path / "r.json"))
    assert code == 0
    assert json.loads((tmp_path / "r.json").read_text())["results"][0]["images"] == 3


def test_maskclip_and_checkpoint_run_on_real_samples(real_data, tiny_model, tmp_path, capsys):
    from synseg.checkpoint import save_model

    code, out, _ = run_eval(capsys, "--benchmark", "voc,city", "--root", str(real_data), "--method", "maskclip",
                            *TINY, "--protocol", "whole", "--limit", "2")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "| Method | VOC | City | Avg. |" and lines[2].startswith("| MaskCLIP | ") and len(lines) == 3

    save_model(tiny_model, tmp_path / "ckpt")
    code, out, _ = run_eval(capsys, "--benchmark", "ade,voc", "--root", str(real_data), "--checkpoint",
                            str(tmp_path / "ckpt"), "--method", "synseg,maskclip", "--limit", "1",
                            "--json", str(tmp_path / "r.json"), "--card")
    assert code == 0
    assert (tmp_path / "ckpt" / "README.md").read_text().endswith(out)  # the table, in the model card
    lines = out.splitlines()
    assert lines[0] == "| Method | VOC | ADE | Avg. |"
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| SynSeg", "| MaskCLIP"]
    results = json.loads((tmp_path / "r.json").read_text())["results"]
    assert [(r["method"], r["benchmark"], r["images"]) for r in results] == [
        ("SynSeg", "ade", 1), ("SynSeg", "voc", 1), ("MaskCLIP", "ade", 1), ("MaskCLIP", "voc", 1)]
    for result in results:
        assert 0 <= result["miou"] <= 100 and len(result["per_class_iou"]) == BENCHMARKS[result["benchmark"]].num_classes()


def test_maskclip_is_the_value_path_of_the_last_block(tiny_model):
    """Independent route: open_clip's own last block with attention restricted to each token itself (diagonal mask)."""
    from synseg.encoding import EncodedViews
    from synseg.methods.maskclip import MaskCLIP

    maskclip = MaskCLIP(tiny_model.backbone)
    backbone, visual = tiny_model.backbone, tiny_model.backbone.clip.visual
    torch.manual_seed(1)
    pixels = backbone.normalize(torch.rand(2, 3, backbone.image_size, backbone.image_size))
    with torch.no_grad():
        x = visual._embeds(pixels)
        blocks = visual.transformer.resblocks
        for block in blocks[:-1]:
            x = block(x)
        tokens = x.shape[1]
        only_self = torch.full((tokens, tokens), float("-inf")).fill_diagonal_(0)
        x = blocks[-1](x, attn_mask=only_self)
        expected = torch.nn.functional.normalize(visual.ln_post(x[:, 1:]) @ visual.proj, dim=-1)
    h, w = backbone.grid
    views = EncodedViews(pixels, backbone)
    got = maskclip.dense_features(views).flatten(2).transpose(1, 2)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert got.shape == (2, h * w, backbone.embed_dim)

    text = backbone.embed_labels(["cat", "dog", "sky"], ("a photo of a {}.",))
    maps = maskclip.activation_maps(views, text)
    assert maps.shape == (2, 3, backbone.image_size, backbone.image_size)
    assert maps.min() >= 0 and maps.max() <= 1
    torch.testing.assert_close(maps.sum(dim=1), torch.ones(2, backbone.image_size, backbone.image_size))


def test_image_and_label_of_different_sizes_are_an_error(real_data, tiny_model, tmp_path, capsys):
    shutil.copytree(real_data / "cityscapes", tmp_path / "cityscapes")
    (label,) = (tmp_path / "cityscapes" / "gtFine").rglob("*.png")
    write_png(label, np.full((100, 200), 7))
    code, _, err = run_eval(capsys, "--benchmark", "city", "--root", str(tmp_path), "--method", "maskclip", *TINY, "--protocol", "whole")
    assert code == 2 and "leftImg8bit.png is 256x128 but its label" in err and "is 200x100" in err


def test_label_values_outside_the_benchmark_are_named(real_data, tmp_path, capsys):
    shutil.copytree(real_data / "ADEChallengeData2016", tmp_path / "ADEChallengeData2016")
    ground_truth_predictions(real_data, "ade", tmp_path / "preds")
    label = tmp_path / "ADEChallengeData2016" / "annotations" / "validation" / "ADE_val_00000001.png"
    write_png(label, np.where(np.asarray(Image.open(label)) == 1, 200, np.asarray(Image.open(label))))
    code, _, err = run_eval(capsys, "--benchmark", "ade", "--root", str(tmp_path), "--predictions", str(tmp_path / "preds"))
    assert code == 2
    assert re.search(r"ade image ADE_val_00000001 \(.*ADE_val_00000001.png\): ground truth has values outside 0..149 "
                     r"\(and 255\): 199", err.splitlines()[-1]), err


def test_training_free_methods_under_two_protocols_print_one_table(real_data, tmp_path, capsys):
    names = ["sky, wall, floor", *(f"{n}, people" if n == "person" else n for n in BENCHMARKS["voc"].class_names()[1:])]
    (tmp_path / "voc.txt").write_text("\n".join(names) + "\n")
    reports = {}
    for run, class_names in (("named", ["--class-names", f"voc={tmp_path / 'voc.txt'}"]), ("again", ["--class-names",
                             f"voc={tmp_path / 'voc.txt'}"]), ("plain", [])):
        torch.manual_seed(0)  # the same random backbone in every run: only the class names differ
        code, out, _ = run_eval(capsys, "--benchmark", "voc", "--root", str(real_data), *TINY, "--limit", "1",
                                "--method", "maskclip,sclip,clearclip,naclip", "--protocol", "slide,quadrants",
                                *class_names, "--json", str(tmp_path / f"{run}.json"))
        assert code == 0
        reports[run] = [list(r["per_class_iou"].values()) for r in json.loads((tmp_path / f"{run}.json").read_text())["results"]]
    assert reports["named"] == reports["again"] and reports["named"] != reports["plain"]  # the file had an effect
    lines = out.splitlines()
    assert lines[0] == "| Method | Protocol | VOC | Avg. |" and len(lines) == 10
    rows = [tuple(cell.strip() for cell in line.split("|")[1:3]) for line in lines[2:]]
    assert rows == [(m, p) for m in ("MaskCLIP", "SCLIP", "ClearCLIP", "NACLIP")
                    for p in ("slide (336/224/112)", "quadrants")]
    report = json.loads((tmp_path / "named.json").read_text())
    assert report["settings"]["protocols"] == ["slide (336/224/112)", "quadrants"]
    for result in report["results"]:
        assert result["images"] == 1 and len(result["per_class_iou"]) == 21 and 0 <= result["miou"] <= 100

    code, out, _ = run_eval(capsys, "--benchmark", "voc", "--root", str(real_data), "--backbone", "synseg-tiny-p16",
                            "--pretrained", "none", "--limit", "1", "--method", "resclip,scclip,proxyclip:b16",
                            "--protocol", "slide,whole")
    assert code == 0  # the methods of 2025 (ProxyCLIP with a random DINO ViT-B/16 beside the random CLIP)
    rows = [tuple(cell.strip() for cell in line.split("|")[1:3]) for line in out.splitlines()[2:]]
    assert rows == [(m, p) for m in ("ResCLIP", "SC-CLIP", "ProxyCLIP (b16)") for p in ("slide (336/224/112)", "whole")]

    (tmp_path / "short.txt").write_text("cat\ndog\n")
    code, _, err = run_eval(capsys, "--benchmark", "voc", "--root", str(real_data), *TINY, "--method", "sclip",
                            "--class-names", str(tmp_path / "short.txt"))
    assert code == 2 and "has 2 classes but voc has 20 (or 21 with background first)" in err


def test_clipseg_is_evaluated_like_any_method(real_data, capsys):
    """`synseg eval --method clipseg`: Hugging Face's CLIPSeg (random weights here: `--pretrained none`) beside a
    training-free method in one table."""
    code, out, err = run_eval(capsys, "--benchmark", "voc", "--root", str(real_data), *TINY, "--limit", "1",
                              "--method", "clipseg,maskclip", "--protocol", "whole")
    assert code == 0, err
    assert [line.split(" | ")[0] for line in out.splitlines()[2:]] == ["| CLIPSeg", "| MaskCLIP"]
