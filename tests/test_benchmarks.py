"""Benchmark readers: class lists, label conventions on the real samples, and one-message layout errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synseg.data.benchmarks import BENCHMARKS, get_benchmark
from synseg.data.benchmarks.cityscapes import LABEL_TO_TRAIN_ID
from synseg.errors import UserError

def raw(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.int64)


def save(path: Path, array: np.ndarray, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8), mode="RGB" if array.ndim == 3 else None).convert(mode).save(path)


@pytest.mark.parametrize("name, count, background", [
    ("voc", 21, True), ("context", 59, False), ("object", 81, True), ("stuff", 171, False), ("city", 19, False),
    ("ade", 150, False),
])
def test_class_lists(name, count, background):
    cls = BENCHMARKS[name]
    names = cls.class_names()
    assert len(names) == count and cls.num_classes() == count
    assert len(set(names)) == count and all(n == n.strip() and n for n in names)
    assert cls.has_background is background
    assert (names[0] == "background") is background
    assert cls.prompt_labels() == list(names[1:] if background else names)


def test_clip_renames():
    voc = BENCHMARKS["voc"].class_names()
    assert {"table", "potted plant", "monitor"} <= set(voc)
    assert not {"diningtable", "pottedplant", "tvmonitor"} & set(voc)
    assert BENCHMARKS["object"].class_names()[1:] == BENCHMARKS["stuff"].class_names()[:80]
    assert not [n for n in BENCHMARKS["stuff"].class_names() if "-" in n]


def test_ade_names_are_first_names_of_object_info(real_data):
    lines = (real_data / "ADEChallengeData2016" / "objectInfo150.txt").read_text().splitlines()[1:]
    assert BENCHMARKS["ade"].class_names() == tuple(line.split("\t")[4].split(",")[0].strip() for line in lines)


def test_voc_real_samples(real_data):
    voc = get_benchmark("voc", real_data)
    stems = (real_data / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt").read_text().split()
    assert [s.stem for s in voc.samples] == stems and len(voc) == 14
    for sample in voc.samples[:4]:
        label = voc.read_label(sample.label_path)
        assert label.dtype == np.int64
        assert np.array_equal(label, raw(sample.label_path))  # palette indices, not colours
        assert set(np.unique(label)) <= set(range(21)) | {255}
        assert label.shape == Image.open(sample.image_path).size[::-1]


def test_root_may_point_inside_the_layout(real_data):
    assert len(get_benchmark("voc", real_data / "VOCdevkit" / "VOC2012")) == 14
    assert len(get_benchmark("ade", real_data / "ADEChallengeData2016")) == 3
    assert len(get_benchmark("voc", real_data / "VOCdevkit")) == 14


def test_root_may_be_a_bare_voc2012_folder(real_data, tmp_path):
    shutil.copytree(real_data / "VOCdevkit" / "VOC2012", tmp_path / "VOC2012")
    assert len(get_benchmark("voc", tmp_path / "VOC2012")) == 14


def test_ade_reduces_zero_label(real_data):
    ade = get_benchmark("ade", real_data)
    assert len(ade) == 3
    for sample in ade.samples:
        original, label = raw(sample.label_path), ade.read_label(sample.label_path)
        assert np.array_equal(label == 255, original == 0)
        assert np.array_equal(label[original > 0], original[original > 0] - 1)


def test_cityscapes_maps_label_ids_to_train_ids(real_data):
    city = get_benchmark("city", real_data)
    (sample,) = city.samples
    assert sample.stem == "frankfurt_000000_000294"
    original, label = raw(sample.label_path), city.read_label(sample.label_path)
    for label_id in np.unique(original):
        assert set(np.unique(label[original == label_id])) == {LABEL_TO_TRAIN_ID.get(int(label_id), 255)}
    assert label[original == 7].size and (label[original == 7] == 0).all()  # road
    assert (label[original == 1] == 255).all()  # ego vehicle is ignored


def test_context_and_coco_conventions(tmp_path):
    values = np.array([[0, 1, 59], [60, 255, 3]])
    base = tmp_path / "VOCdevkit" / "VOC2010"
    save(base / "JPEGImages" / "a.jpg", np.zeros((2, 3, 3)), "RGB")
    save(base / "SegmentationClassContext" / "a.png", values)
    (base / "ImageSets" / "SegmentationContext").mkdir(parents=True)
    (base / "ImageSets" / "SegmentationContext" / "val.txt").write_text("a\n")
    context = get_benchmark("context", tmp_path)
    assert context.read_label(context.samples[0].label_path).tolist() == [[255, 0, 58], [59, 255, 2]]

    for stem in ("000000000139", "000000000285"):
        save(tmp_path / "images" / "val2017" / f"{stem}.jpg", np.zeros((2, 3, 3)), "RGB")
        save(tmp_path / "annotations" / "val2017" / f"{stem}_instanceTrainIds.png", values)
        save(tmp_path / "annotations" / "val2017" / f"{stem}_labelTrainIds.png", values)
    for name in ("object", "stuff"):
        coco = get_benchmark(name, tmp_path)
        assert [s.stem for s in coco.samples] == ["000000000139", "000000000285"]
        assert coco.read_label(coco.samples[0].label_path).tolist() == values.tolist()


def test_damaged_voc_layout_is_reported_in_one_message(real_data, tmp_path):
    shutil.copytree(real_data / "VOCdevkit", tmp_path / "VOCdevkit")
    base = tmp_path / "VOCdevkit" / "VOC2012"
    (base / "SegmentationClass" / "vainf_val_sample001.png").unlink()
    (base / "JPEGImages" / "vainf_val_sample008.jpg").unlink()
    with (base / "ImageSets" / "Segmentation" / "val.txt").open("a") as split:
        split.write("not_there\n")
    with pytest.raises(UserError) as error:
        get_benchmark("voc", tmp_path)
    message = str(error.value)
    assert "\n" not in message and str(tmp_path) in message
    assert "2 images listed in val.txt but missing (not_there, vainf_val_sample008)" in message
    assert "2 labels listed in val.txt but missing (not_there, vainf_val_sample001)" in message
    assert "expected ROOT/VOCdevkit/VOC2012/" in message


def test_missing_folders_are_all_named(tmp_path):
    (tmp_path / "ADEChallengeData2016" / "images").mkdir(parents=True)
    with pytest.raises(UserError, match=r"missing .*images/validation; missing .*annotations/validation \(expected"):
        get_benchmark("ade", tmp_path)
    with pytest.raises(UserError, match="not a folder"):
        get_benchmark("ade", tmp_path / "nowhere")
    with pytest.raises(UserError, match="unknown benchmark 'pascal'"):
        get_benchmark("pascal", tmp_path)


def test_unpaired_files_are_named(real_data, tmp_path):
    shutil.copytree(real_data / "cityscapes", tmp_path / "cityscapes")
    extra = tmp_path / "cityscapes" / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelIds.png"
    save(extra, np.zeros((2, 2)))
    with pytest.raises(UserError, match=r"1 labels without an image \(lindau_000000_000019\)"):
        get_benchmark("city", tmp_path)
    shutil.copytree(real_data / "ADEChallengeData2016", tmp_path / "ADEChallengeData2016")
    (tmp_path / "ADEChallengeData2016" / "annotations" / "validation" / "ADE_val_00000002.png").unlink()
    with pytest.raises(UserError, match=r"1 images without a label \(ADE_val_00000002\)"):
        get_benchmark("ade", tmp_path)


def test_empty_split_and_colour_labels_are_errors(real_data, tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    (base / "images" / "validation").mkdir(parents=True)
    (base / "annotations" / "validation").mkdir(parents=True)
    with pytest.raises(UserError, match="no image/label pairs"):
        get_benchmark("ade", tmp_path)
    save(base / "images" / "validation" / "x.jpg", np.zeros((2, 2, 3)), "RGB")
    save(base / "annotations" / "validation" / "x.png", np.zeros((2, 2, 3)), "RGB")
    ade = get_benchmark("ade", tmp_path)
    with pytest.raises(UserError, match="is a RGB image; expected a single-channel PNG"):
        ade.read_label(ade.samples[0].label_path)


def test_folder_benchmark_reads_its_own_class_list(tmp_path):
    from synseg.cli import main

    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (tmp_path / sub).mkdir(parents=True)
    (tmp_path / "classes.txt").write_text("grass\nred circle\nblue star\n")
    labels = np.zeros((12, 16), dtype=np.uint8)
    labels[2:6, 3:9], labels[8:, 10:] = 1, 2
    Image.fromarray(np.zeros((12, 16, 3), dtype=np.uint8)).save(tmp_path / "JPEGImages" / "a.png")
    Image.fromarray(labels).save(tmp_path / "SegmentationClass" / "a.png")
    (tmp_path / "ImageSets/Segmentation/val.txt").write_text("a\n")
    benchmark = get_benchmark("folder", tmp_path)
    assert benchmark.class_names() == ("grass", "red circle", "blue star") and not benchmark.has_background
    assert benchmark.prompt_labels() == ["grass", "red circle", "blue star"]
    predictions = tmp_path / "pred"
    predictions.mkdir()
    Image.fromarray(labels).save(predictions / "a.png")
    assert main(["eval", "--benchmark", "folder", "--root", str(tmp_path), "--predictions", str(predictions),
                 "--json", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["results"][0]["miou"] == 100.0
    (tmp_path / "classes.txt").unlink()
    with pytest.raises(UserError, match="classes.txt"):
        get_benchmark("folder", tmp_path)
