"""The library's shape as users and contributors rely on it: the public API at the package root, every registered
method built by one builder and run by one Segmenter, and the layers importing only what they may
(docs/architecture.md)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SRC = Path(__file__).resolve().parents[1] / "src" / "synseg"


def test_the_public_api_is_at_the_package_root_and_loads_nothing_heavy_on_import():
    code = ("import sys, synseg; assert 'torch' not in sys.modules; "
            "synseg.build_predictor; names = synseg.list_methods(); synseg.Segmenter; synseg.ImageEncoding; print(names)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "'synseg'" in done.stdout and "'clipseg'" in done.stdout and "'readout'" in done.stdout


def test_every_registered_method_builds_from_plain_arguments_and_segments(tmp_path):
    """One builder for every entry of the registry (an untrained SynSeg, CLIPSeg with random weights, the training-free
    methods), all on one random tiny CLIP; each segments an image into maps of its size."""
    import synseg

    methods = synseg.list_methods()
    predictors = synseg.build_predictors(methods, backbone="synseg-tiny-p16", pretrained="none", device="cpu",
                                         allow_untrained=True)
    assert [str(choice) for choice in predictors] == methods
    clips = {id(p.backbone) for c, p in predictors.items() if c.spec.training_free or c.name == "synseg"}
    assert len(clips) == 1  # the methods on CLIP share one backbone
    image = synseg.ImageEncoding(Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)))
    for choice, predictor in predictors.items():
        result = synseg.Segmenter(predictor, "whole").segment(image, ["cat", "dog"], background=True)
        assert result.label_map.shape == (40, 56) and result.maps.shape == (2, 40, 56), choice
        assert 0 <= float(result.maps.min()) and float(result.maps.max()) <= 1, choice


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_layers_import_only_what_they_may():
    """The library never imports the command line or the research harness; the research harness never imports the
    command line (the `python -m` entry points excepted)."""
    offences = []
    for path in SRC.rglob("*.py"):
        part = path.relative_to(SRC).parts
        if part[0] in ("commands", "cli.py") or path.name == "__main__.py":
            continue
        forbidden = ("synseg.cli", "synseg.commands") + (() if part[0] == "research" else ("synseg.research",))
        offences += [f"{path.relative_to(SRC)} imports {name}" for name in imported_modules(path)
                     if name.startswith(forbidden)]
    assert not offences, offences
