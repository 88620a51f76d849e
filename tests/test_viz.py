"""`synseg viz`: Fig. 3, overlays and comparison grids are PNGs of the expected size; their label maps are right."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from synseg.checkpoint import save_model
from synseg.cli import main
from synseg.viz import blend, shown_classes, threshold_label_maps

pytest.importorskip("matplotlib", reason="figures need matplotlib: pip install 'synseg[viz]'")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_model):
    return save_model(tiny_model, tmp_path_factory.mktemp("viz") / "ckpt")


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 80, 3), dtype=np.uint8)).save(path)
    return path


def distinct_colours(path) -> int:
    return len(np.unique(np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3), axis=0))


def test_fig3_is_one_png_of_image_activation_and_six_thresholds(photo, checkpoint, tmp_path):
    out = tmp_path / "fig3.png"
    assert main(["viz", "fig3", str(photo), "--labels", "cat, dog", "--label", "dog", "--checkpoint", str(checkpoint),
                 "--out", str(out), "--protocol", "whole"]) == 0
    image = Image.open(out)
    assert image.format == "PNG"
    assert image.size == (2080, 350)  # 8 panels of 2.6 in, one square row plus the legend, at 100 dpi
    assert distinct_colours(out) > 100


def test_overlay_and_its_size(photo, checkpoint, tmp_path):
    out = tmp_path / "overlay.png"
    assert main(["viz", "overlay", str(photo), "--labels", "cat, dog", "--background", "--checkpoint", str(checkpoint),
                 "--out", str(out), "--protocol", "whole"]) == 0
    assert Image.open(out).size == (710, 560)


def test_grid_on_real_voc_samples(real_data, checkpoint, tmp_path):
    out = tmp_path / "grid.png"
    assert main(["viz", "grid", "--benchmark", "voc", "--root", str(real_data), "--limit", "2", "--protocol", "whole",
                 "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    assert Image.open(out).size == (1230, 590)  # 4 panels + legend wide, 2 rows of square VOC samples


def test_threshold_label_maps_grow_as_the_threshold_falls():
    activations = np.random.default_rng(1).random((3, 20, 30)).astype(np.float32)
    maps = threshold_label_maps(activations, (0.1, 0.5, 0.9))
    best, index = activations.max(axis=0), activations.argmax(axis=0)
    np.testing.assert_array_equal(maps[1], np.where(best < 0.5, 0, index + 1))
    assert ((maps[2] > 0) <= (maps[1] > 0)).all() and ((maps[1] > 0) <= (maps[0] > 0)).all()
    assert (maps[0] > 0).all()  # the best of three uniform draws is below 0.1 with probability 1e-3


def test_blend_keeps_background_and_whitens_ignored_pixels():
    photo = Image.new("RGB", (4, 2), (10, 20, 30))
    label_map = np.array([[0, 1, 2, 255], [0, 1, 2, 255]])
    mixed = blend(photo, label_map, background=True)
    assert (mixed[:, 0] == (10, 20, 30)).all()
    assert (mixed[:, 3] == 255).all()
    assert not (mixed[:, 1] == mixed[:, 2]).all()  # two classes, two colours


def test_legend_lists_the_largest_classes_only():
    label_map = np.zeros((100, 100), dtype=np.int64)
    label_map[:10] = 3
    label_map[0, 0] = 7  # one pixel: below the legend's share
    assert shown_classes([label_map]) == [0, 3]
    many = np.arange(10000).reshape(100, 100) % 30
    assert len(shown_classes([many], limit=10)) == 10


@pytest.mark.parametrize("argv, message", [
    (["fig3", "x.png", "--labels", "a", "--out", "o.jpg"], "--out must name a .png file"),
    (["fig3", "PHOTO", "--labels", "a, b", "--label", "c", "--out", "o.png"], "--label 'c' is not one of --labels"),
    (["fig3", "PHOTO", "--labels", "a", "--thresholds", "0.1,2", "--out", "o.png"], "--thresholds must be within"),
    (["overlay", "missing.png", "--labels", "a", "--out", "o.png"], "image not found"),
])
def test_mistakes_fail_in_one_line(argv, message, photo, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [str(photo) if a == "PHOTO" else a for a in argv]
    assert main(["viz", *argv, "--backbone", "synseg-tiny", "--pretrained", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
