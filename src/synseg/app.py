"""The local web page of `synseg app` (gradio): an image and any labels in; the overlay with its legend, each label's
heat map and the label map to download out, for SynSeg and the training-free methods on the same CLIP."""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from synseg.errors import UserError
from synseg.predictor import Segmenter, parse_labels
from synseg.protocols import DEFAULT_PROTOCOL
from synseg.render import enlarge, heat_map, label_map_image, overlay


PAGE_PROTOCOLS = ("quadrants", "whole")  # the protocols the page offers: one image each, quickly


@dataclass
class AppSetup:
    """What the page offers: one predictor per method (shown by its title), and its defaults."""

    title: str
    predictors: dict[str, object]
    labels: str
    protocol: str
    examples: list[Path] = field(default_factory=list)
    scene_size: int | None = None  # set when scenes of the synthetic world can be generated on the page
    threshold: float = 0.4


def segment_image(setup: AppSetup, image: Image.Image | None, labels: str, method: str, protocol: str, background: bool,
                  threshold: float, folder: Path) -> tuple[Image.Image, list[tuple[Image.Image, str]], list[str]]:
    """The page's one action: overlay with legend, (heat map, label) pairs, and the files to download."""
    if image is None:
        raise UserError("upload or pick an image first")
    if method not in setup.predictors:
        raise UserError(f"unknown method {method!r} (choose from {', '.join(setup.predictors)})")
    if protocol not in PAGE_PROTOCOLS:
        raise UserError(f"unknown protocol {protocol!r} (choose from {', '.join(PAGE_PROTOCOLS)})")
    names = parse_labels(labels)
    result = Segmenter(setup.predictors[method], protocol).segment(image, names, threshold=threshold, background=background)
    classes = (["background"] if background else []) + names
    folder.mkdir(parents=True, exist_ok=True)
    label_file, names_file = folder / "label_map.png", folder / "label_map.json"
    label_map_image(result.label_map, len(classes)).save(label_file)
    names_file.write_text(json.dumps({"classes": classes, "method": method, "protocol": protocol,
                                      "threshold": threshold if background else None}, indent=2) + "\n")
    heat_maps = [(enlarge(heat_map(activation)), label) for label, activation in zip(names, result.activations)]
    return overlay(image, result.label_map, classes), heat_maps, [str(label_file), str(names_file)]


def build_setup(checkpoint: str | None = None, backbone: str | None = None, pretrained: str | None = None,
                device: str = "auto") -> AppSetup:
    """The page's methods: SynSeg (a checkpoint, else the world model shipped with synseg, on generated scenes) and
    every training-free method on its CLIP, SynSeg and the readout also with region verification; with only a
    backbone, the training-free methods alone."""
    from synseg.methods import build_predictors, showcase_methods

    world = not checkpoint and not backbone
    if world:
        from synseg.synthetic import PROTOCOL, SCENE_SIZE, SHIPPED_CLIP, SHIPPED_DEMO

        checkpoint, pretrained = str(SHIPPED_DEMO), pretrained or str(SHIPPED_CLIP)
    built = build_predictors(showcase_methods(trained=bool(checkpoint)), checkpoint, backbone, pretrained, device,
                             distinct=True)
    predictors = {f"{c.title} (training-free)" if c.spec.training_free else c.title: p for c, p in built.items()}
    threshold = next(iter(built.values())).background_threshold
    if world:
        _, labels = world_scene(0, SCENE_SIZE)
        return AppSetup("the world model shipped with synseg (generated scenes)", predictors, labels,
                        PROTOCOL, scene_size=SCENE_SIZE, threshold=threshold)
    from importlib import resources

    example = resources.files("synseg").joinpath("assets", "aeroplane.jpg")
    return AppSetup(checkpoint or f"{backbone} (training-free only)", predictors, "aeroplane, sky, grass",
                    DEFAULT_PROTOCOL, [example], threshold=threshold)


def world_scene(seed: int, size: int) -> tuple[Image.Image, str]:
    """A new generated scene and the world's class names as its labels."""
    from synseg.synthetic import BACKDROP
    from synseg.synthetic.world import CLASSES, make_scene, scene_rng

    scene = make_scene(scene_rng(seed, 0), size, "test", backdrop=BACKDROP)
    return Image.fromarray(scene.image), ", ".join(CLASSES)


def build_app(setup: AppSetup):
    """The gradio Blocks; `segment` is its API endpoint (what gradio's client calls). The elem_ids are what
    scripts/app_screenshot.py finds in the browser."""
    import gradio as gr

    def run(image, labels, method, protocol, background, threshold):
        try:
            folder = Path(tempfile.mkdtemp(prefix="synseg-app-"))
            return segment_image(setup, image, labels, method, protocol, background, threshold, folder)
        except UserError as error:
            raise gr.Error(str(error)) from None

    with gr.Blocks(title=f"synseg: {setup.title}") as app:
        gr.Markdown(f"## synseg: open-vocabulary segmentation\nModel: {setup.title}. Type any labels, comma-separated.")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="pil", label="image", sources=["upload", "clipboard"], elem_id="synseg-image")
                labels = gr.Textbox(value=setup.labels, label="labels (comma-separated)")
                method = gr.Dropdown(list(setup.predictors), value=next(iter(setup.predictors)), label="method")
                with gr.Accordion("settings", open=False):
                    protocol = gr.Radio(list(PAGE_PROTOCOLS), value=setup.protocol,
                                        label="protocol (quadrants: the whole image and its 4 quadrants; whole: the "
                                              "whole image alone)")
                    background = gr.Checkbox(False, label="background class where the best activation is weak")
                    threshold = gr.Slider(0.0, 1.0, value=setup.threshold, step=0.01, label="background threshold")
                with gr.Row():
                    if setup.scene_size:
                        scene = gr.Button("new generated scene", elem_id="synseg-scene")
                        seed = gr.State(20_000)
                    go = gr.Button("segment", variant="primary", elem_id="synseg-segment")
                if setup.examples:
                    gr.Examples([[str(p)] for p in setup.examples], inputs=[image], elem_id="synseg-examples")
            with gr.Column():
                shown = gr.Image(type="pil", label="overlay", format="png", elem_id="synseg-overlay")
                heat = gr.Gallery(label="heat maps", columns=4, height="auto")
                files = gr.File(label="label map (PNG of class indices) and its class names", file_count="multiple")
        go.click(run, [image, labels, method, protocol, background, threshold], [shown, heat, files], api_name="segment")
        if setup.scene_size:
            def new_scene(number: int):
                picture, names = world_scene(number, setup.scene_size)
                return picture, names, number + 1

            scene.click(new_scene, [seed], [image, labels, seed], api_name="scene")
    return app
