"""`synseg app` through gradio's client: the shipped world model segments a generated scene with no download."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

gradio = pytest.importorskip("gradio", reason="the app tests need gradio: pip install 'synseg[app]'")


@pytest.fixture(scope="module")
def client():
    from gradio_client import Client

    from synseg.app import build_app, build_setup

    app = build_app(build_setup(device="cpu"))
    app.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    try:
        yield Client(app.local_url, verbose=False, download_files=False)
    finally:
        app.close()


def test_page_offers_synseg_and_the_training_free_methods(client):
    from synseg.methods import REGISTRY, list_methods

    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/segment", "/scene"} <= set(api)
    choices = api["/segment"]["parameters"][2]["type"]["enum"]
    assert choices == (["SynSeg", "SynSeg (unverified)"]
                       + [f"{REGISTRY[name].title} (training-free)" for name in list_methods("training-free")]
                       + ["CLS readout + region verification (training-free)"])


def test_generated_scene_segments_with_legend_heat_maps_and_label_map(client, tmp_path):
    from gradio_client import handle_file

    from synseg.render import enlargement
    from synseg.synthetic.world import CLASSES

    scene, labels = client.predict(api_name="/scene")
    assert labels == ", ".join(CLASSES)
    overlay, heat_maps, files = client.predict(handle_file(scene["path"]), labels, "SynSeg", "whole", True, 0.4,
                                               api_name="/segment")
    picture = Image.open(scene["path"])
    shown = Image.open(overlay["path"])
    assert shown.height >= picture.height and shown.width > picture.width  # the legend is right of the image
    assert [caption for caption in (h["caption"] for h in heat_maps)] == list(CLASSES)
    heat = np.asarray(Image.open(heat_maps[0]["image"]["path"]).convert("RGB"), dtype=np.int64)
    factor = enlargement(picture.width, picture.height)
    assert heat.shape[:2] == (picture.height * factor, picture.width * factor)  # enlarged as the overlay is
    assert np.abs(heat - heat.mean(axis=2, keepdims=True)).max() <= 4  # render.heat_map's grey (sent as lossy webp)
    label_file, names_file = sorted(files, key=lambda f: f["path"].endswith(".json"))
    label_map = np.asarray(Image.open(label_file["path"]))
    assert label_map.shape == (picture.height, picture.width) and label_map.max() <= len(CLASSES)
    assert json.loads(open(names_file["path"]).read())["classes"] == ["background", *CLASSES]


def test_bad_labels_are_shown_as_one_message(client):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    scene, _ = client.predict(api_name="/scene")
    with pytest.raises(AppError, match="duplicate label"):
        client.predict(handle_file(scene["path"]), "grass, grass", "SynSeg", "whole", False, 0.4, api_name="/segment")


def test_browser_script_segments_a_scene_and_saves_a_screenshot(client, tmp_path):
    """scripts/app_screenshot.py in headless Chromium against the page already served (Debian's chromium)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("playwright", reason="the browser test needs playwright: pip install 'synseg[browser]'")
    if not os.access("/usr/bin/chromium", os.X_OK):
        pytest.skip("the browser test needs Debian's Chromium at /usr/bin/chromium (apt install chromium)")
    script = Path(__file__).parents[1] / "scripts" / "app_screenshot.py"
    out = tmp_path / "app.png"
    done = subprocess.run([sys.executable, str(script), "--out", str(out), "--url", client.src, "--timeout", "90"],
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "overlay with its legend" in done.stdout
    assert Image.open(out).size[0] == 1400  # the viewport's width; the full page is taller


def test_a_checkpoint_is_served_in_place_of_the_world_model(tiny_model, tmp_path):
    """`synseg app --checkpoint DIR`: the page's SynSeg is that checkpoint's model (its maps, its threshold), with the
    example photo instead of generated scenes."""
    from synseg.checkpoint import save_model
    from synseg.app import build_setup
    from synseg.predictor import Segmenter

    import copy

    import torch

    trained = copy.deepcopy(tiny_model)
    with torch.no_grad():  # a decoder of its own, which only loading the checkpoint gives the page
        for parameter in trained.decoder.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    checkpoint = save_model(trained, tmp_path / "ckpt")
    torch.manual_seed(0)  # the random backbone tiny_model was built with (a checkpoint names its backbone, not weights)
    setup = build_setup(str(checkpoint), device="cpu")
    assert setup.title == str(checkpoint) and setup.scene_size is None and setup.examples[0].name == "aeroplane.jpg"
    assert setup.threshold == tiny_model.background_threshold and "SynSeg" in setup.predictors
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8))
    served = Segmenter(setup.predictors["SynSeg"], "whole").segment(image, ["aeroplane", "sky"])
    direct = Segmenter(trained, "whole").segment(image, ["aeroplane", "sky"])
    assert np.array_equal(served.label_map, direct.label_map)
    assert np.array_equal(served.maps.numpy(), direct.maps.numpy())
