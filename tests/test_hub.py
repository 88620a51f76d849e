"""Checkpoints by hub id: `--checkpoint org/name[@revision]` through huggingface_hub's cache, offline, no network."""
from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
from PIL import Image

from synseg.checkpoint import from_hub, load_config, save_model
from synseg.cli import main

ASSET = Path(__file__).resolve().parents[1] / "src" / "synseg" / "assets" / "aeroplane.jpg"
MAIN, OLD = "a" * 40, "b" * 40


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, tiny_model):
    """A Hugging Face cache as `hf download` leaves it: refs name commits, snapshots hold the files; offline mode."""
    cache = tmp_path / "hub"
    repo = cache / "models--synseg--tiny"
    for commit, threshold in ((MAIN, 0.4), (OLD, 0.25)):
        tiny_model.config.background_threshold = threshold
        save_model(tiny_model, repo / "snapshots" / commit)
    tiny_model.config.background_threshold = 0.4
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(MAIN)
    (repo / "refs" / "v0").write_text(OLD)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    from_hub.cache_clear()
    yield repo
    from_hub.cache_clear()


def test_hub_id_and_revisions_resolve_from_the_cache(hub_cache):
    assert load_config("synseg/tiny").background_threshold == 0.4
    assert load_config("synseg/tiny@v0").background_threshold == 0.25
    assert load_config(f"synseg/tiny@{OLD}").background_threshold == 0.25


def test_segment_with_a_hub_id(hub_cache, tmp_path, capsys):
    code = main(["segment", str(ASSET), "--labels", "aeroplane, sky", "--checkpoint", "synseg/tiny", "--protocol", "whole",
                 "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    label_map = np.asarray(Image.open(tmp_path / "out" / "aeroplane.png"))
    assert label_map.shape == Image.open(ASSET).size[::-1] and set(np.unique(label_map)) <= {0, 1}


def test_uncached_model_offline_is_one_line_naming_the_local_alternative(hub_cache, tmp_path, capsys):
    code = main(["segment", str(ASSET), "--labels", "sky", "--checkpoint", "synseg/absent", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "synseg/absent is neither a local folder nor in the Hugging Face cache" in err
    assert "pass a local checkpoint folder instead (--checkpoint PATH" in err


def test_an_existing_local_folder_wins_over_a_hub_id(tmp_path, monkeypatch, tiny_model):
    save_model(tiny_model, tmp_path / "synseg" / "tiny")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert load_config("synseg/tiny").backbone.name == "synseg-tiny"


def test_model_card_evaluation_section_is_replaced_not_repeated(tmp_path):
    from synseg.card import model_card, write_evaluation
    from synseg.train.config import TrainConfig

    card = model_card("run", TrainConfig(), "/data/cc12m/{00000..01242}.tar", 1_234_567)
    (tmp_path / "README.md").write_text(card)
    assert "Frozen open_clip `ViT-B-16` (openai)" in card and "1,234,567 trained parameters" in card
    assert "10,000 iterations of 256 images" in card and "Not evaluated yet" in card
    for value in ("41.0", "42.5"):
        write_evaluation(tmp_path, f"| Method | VOC | Avg. |\n|---|---|---|\n| SynSeg | {value} | {value} |", "synseg eval")
    text = (tmp_path / "README.md").read_text()
    assert text.count("## Evaluation") == 1 and "Not evaluated yet" not in text and "41.0" not in text
    assert text.startswith(card.split("## Evaluation")[0]) and text.endswith("| SynSeg | 42.5 | 42.5 |\n")
