"""`synseg prepare`: small fixtures in each download's official raw format become the layout `synseg eval` reads, with
the right class indices (checked by scoring independently derived label maps at 100 mIoU), restartably."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from synseg.cli import main
from synseg.data.benchmarks import BENCHMARKS

H, W = 6, 8


def save(path: Path, array: np.ndarray, palette: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array.astype(np.uint8))
    if palette:
        image = image.convert("P")
    image.save(path)
    return path


def photo(path: Path, height: int = H, width: int = W) -> Path:
    return save(path, np.random.default_rng(len(str(path))).integers(0, 255, (height, width, 3)))


def regions(*values: int) -> np.ndarray:
    """An H x W map split into vertical bands, one per value."""
    bands = np.array_split(np.arange(W), len(values))
    return np.tile(np.concatenate([np.full(len(band), value) for band, value in zip(bands, values)]), (H, 1))


def prepare(capsys, name: str, source: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    code = main(["prepare", name, "--from", str(source), "--out", str(out), "--workers", "1", *extra])
    stdout, stderr = capsys.readouterr()
    return code, stdout, stderr


def scores_100(capsys, tmp_path: Path, benchmark: str, root: Path, expected: dict[str, np.ndarray]) -> None:
    """`synseg eval --predictions` with the expected class indices as predictions scores 100 mIoU on every image."""
    folder = tmp_path / f"preds-{benchmark}"
    for stem, label in expected.items():
        save(folder / f"{stem}.png", label)
    code = main(["eval", "--benchmark", benchmark, "--root", str(root), "--predictions", str(folder),
                 "--json", str(tmp_path / "r.json")])
    capsys.readouterr()
    assert code == 0
    result = json.loads((tmp_path / "r.json").read_text())["results"][0]
    assert result["images"] == len(expected) and result["miou"] == 100.0


def test_context_from_json(capsys, tmp_path):
    from pycocotools import mask as coco_mask

    names = BENCHMARKS["context"].class_names()
    raw = tmp_path / "raw"
    # Detail ids: 2 aeroplane, 9 bag, 458 wood; 0 = other. Segments are painted in file order: the later wins.
    layers = {"2010_000001": [(2, np.s_[:, :4]), (458, np.s_[:, 3:])], "2010_000002": [(9, np.s_[2:, :])],
              "2010_000003": [(2, np.s_[:, :])]}
    expected_ids = {"2010_000001": {2: np.s_[:, :3], 458: np.s_[:, 3:]}, "2010_000002": {9: np.s_[2:, :]}}
    images, segments = [], []
    for number, (stem, painted) in enumerate(layers.items(), start=1):
        phase = "train" if stem == "2010_000003" else "val"
        images.append({"image_id": number, "file_name": f"{stem}.jpg", "height": H, "width": W, "phase": phase})
        photo(raw / "VOCdevkit" / "VOC2010" / "JPEGImages" / f"{stem}.jpg")
        for category, where in painted:
            mask = np.zeros((H, W), dtype=np.uint8)
            mask[where] = 1
            rle = coco_mask.encode(np.asfortranarray(mask))
            segments.append({"id": len(segments), "image_id": number, "category_id": category,
                             "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    (raw / "trainval_merged.json").write_text(json.dumps({"images": images, "annos_segmentation": segments}))

    code, out, err = prepare(capsys, "context", raw, tmp_path / "data", "--partial")
    assert code == 0 and "context val: 2 of the official 5104 images (INCOMPLETE)" in out
    base = tmp_path / "data" / "VOCdevkit" / "VOC2010"
    assert (base / "ImageSets" / "SegmentationContext" / "val.txt").read_text() == "2010_000001\n2010_000002\n"
    assert not (base / "SegmentationClassContext" / "2010_000003.png").exists()  # a train image
    raw_png = np.asarray(Image.open(base / "SegmentationClassContext" / "2010_000001.png"))
    assert raw_png[0, 0] == 1 and raw_png[0, -1] == 59  # aeroplane, wood: mmsegmentation's 1..59
    expected = {}
    for stem, where_by_id in expected_ids.items():
        label = np.full((H, W), 255)
        for category, where in where_by_id.items():
            label[where] = names.index({2: "aeroplane", 9: "bag", 458: "wood"}[category])
        expected[stem] = label
    scores_100(capsys, tmp_path, "context", tmp_path / "data", expected)

    code, out, err = prepare(capsys, "context", raw, tmp_path / "data")
    assert code == 2 and "wrote 0 files, 4 already there" in err
    assert "val incomplete" in err and "--partial" in err


COCO_STUFF_MAP = regions(0, 12, 181, 255)  # person, stop sign (COCO id 13), wood (id 182), unlabeled


def coco_download(raw: Path, stems: list[str], maps: bool = True) -> None:
    for stem in stems:
        photo(raw / "val2017" / f"{stem}.jpg")
        if maps:
            save(raw / "stuffthingmaps_trainval2017" / "val2017" / f"{stem}.png", COCO_STUFF_MAP)


def test_coco_stuff_and_object_from_stuffthingmaps(capsys, tmp_path):
    raw, root = tmp_path / "raw", tmp_path / "coco"
    coco_download(raw, ["000000000139", "000000000285"])
    (raw / "stuffthingmaps_trainval2017" / "val2017" / "000000000285.png").unlink()
    code, out, err = prepare(capsys, "coco-stuff", raw, root)
    assert code == 2 and "missing: the label of 000000000285.jpg" in out
    coco_download(raw, ["000000000285"])
    assert prepare(capsys, "coco-stuff", raw, root, "--partial")[0] == 0
    assert prepare(capsys, "coco-object", raw, root, "--partial")[0] == 0

    stuff, objects = BENCHMARKS["stuff"].class_names(), BENCHMARKS["object"].class_names()
    stuff_ids = [stuff.index("person"), stuff.index("stop sign"), stuff.index("wood"), 255]
    object_ids = [objects.index("person"), objects.index("stop sign"), 0, 0]
    assert stuff_ids == [0, 11, 170, 255] and object_ids == [1, 12, 0, 0]
    label = np.asarray(Image.open(root / "annotations" / "val2017" / "000000000139_labelTrainIds.png"))
    assert sorted(np.unique(label)) == stuff_ids
    for benchmark, ids in (("stuff", stuff_ids), ("object", object_ids)):
        expected = np.select([COCO_STUFF_MAP == v for v in (0, 12, 181, 255)], ids)
        scores_100(capsys, tmp_path, benchmark, root, {s: expected for s in ("000000000139", "000000000285")})


def test_coco_object_from_instances(capsys, tmp_path):
    raw, root = tmp_path / "raw", tmp_path / "coco"
    coco_download(raw, ["000000000139"], maps=False)
    square = [[1.0, 1.0, 5.0, 1.0, 5.0, 5.0, 1.0, 5.0]]  # polygon x, y pairs
    instances = {
        "images": [{"id": 139, "file_name": "000000000139.jpg", "height": H, "width": W},
                   {"id": 632, "file_name": "000000000632.jpg", "height": H, "width": W}],
        "annotations": [{"image_id": 139, "category_id": 90, "segmentation": square, "area": 16.0, "iscrowd": 0},
                        {"image_id": 139, "category_id": 1, "area": 48.0, "iscrowd": 1,
                         "segmentation": {"size": [H, W], "counts": [0, H * W]}}],
        "categories": [{"id": 1, "name": "person"}, {"id": 90, "name": "toothbrush"}],
    }
    (raw / "annotations").mkdir()
    (raw / "annotations" / "instances_val2017.json").write_text(json.dumps(instances))
    code, out, err = prepare(capsys, "coco-object", raw, root, "--partial")
    assert code == 0 and "drawing the instances" in err and "missing: 000000000632.jpg" in out
    from pycocotools import mask as coco_mask

    toothbrush = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(square, H, W))) > 0
    names = BENCHMARKS["object"].class_names()
    # The crowd of people covers the image; the smaller toothbrush is drawn over it.
    expected = np.where(toothbrush, names.index("toothbrush"), names.index("person"))
    assert names.index("toothbrush") == 80 and toothbrush.sum() > 0
    scores_100(capsys, tmp_path, "object", root, {"000000000139": expected})


def test_cityscapes_train_ids(capsys, tmp_path):
    raw, root = tmp_path / "raw", tmp_path / "data"
    label_ids = regions(7, 26, 0, 33)  # road, car, unlabeled, bicycle
    stems = ["frankfurt_000000_000294", "lindau_000000_000019"]
    for stem in stems:
        city = stem.split("_")[0]
        photo(raw / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png")
        save(raw / "gtFine" / "val" / city / f"{stem}_gtFine_labelIds.png", label_ids)
    code, out, _ = prepare(capsys, "cityscapes", raw, root, "--partial")
    assert code == 0 and "cityscapes val: 2 of the official 500" in out
    names = BENCHMARKS["city"].class_names()
    expected = np.select([label_ids == v for v in (7, 26, 0, 33)], [names.index("road"), names.index("car"), 255,
                                                                     names.index("bicycle")])
    written = root / "cityscapes" / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelTrainIds.png"
    assert np.array_equal(np.asarray(Image.open(written)), expected)
    scores_100(capsys, tmp_path, "city", root, {s: expected for s in stems})


def test_voc_and_ade_check_the_layout(capsys, tmp_path):
    raw, root = tmp_path / "raw", tmp_path / "data"
    devkit = raw / "VOCdevkit" / "VOC2012"
    label = regions(0, 15, 255)
    for stem in ("2007_000033", "2007_000042"):
        photo(devkit / "JPEGImages" / f"{stem}.jpg")
        save(devkit / "SegmentationClass" / f"{stem}.png", label, palette=True)
    (devkit / "ImageSets" / "Segmentation").mkdir(parents=True)
    (devkit / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000033\n2007_000042\n2007_000061\n")
    code, out, err = prepare(capsys, "voc", raw, root)
    assert code == 2 and "voc val: 2 of the official 1449" in out
    assert "missing: JPEGImages/2007_000061.jpg, SegmentationClass/2007_000061.png" in out
    scores_100(capsys, tmp_path, "voc", root, {s: label for s in ("2007_000033", "2007_000042")})

    ade = raw / "ADEChallengeData2016"
    photo(ade / "images" / "validation" / "ADE_val_00000001.jpg")
    save(ade / "annotations" / "validation" / "ADE_val_00000001.png", regions(0, 1, 150))
    photo(ade / "images" / "validation" / "ADE_val_00000002.jpg")
    code, out, _ = prepare(capsys, "ade", raw, root)
    assert code == 2 and "missing: annotations/validation/ADE_val_00000002.png" in out
    scores_100(capsys, tmp_path, "ade", root, {"ADE_val_00000001": regions(255, 0, 149)})


def test_missing_download_is_one_line(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = prepare(capsys, "coco-stuff", tmp_path / "empty", tmp_path / "out")
    assert code == 2 and err.count("\n") == 1
    assert "cannot find COCO-Stuff val maps (val2017) under" in err and "extract stuffthingmaps_trainval2017.zip" in err
