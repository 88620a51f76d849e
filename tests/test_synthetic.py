"""The synthetic world: deterministic, exact ground truth, a clean open-vocabulary split, a VOC-like writer,
and a tiny CLIP that trains on it and saves a file open_clip loads."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from synseg.models.backbone import ARCHITECTURES_DIR
from synseg.synthetic import WORLD_CLIP
from PIL import Image

from synseg.errors import UserError
from synseg.synthetic import (
    CLASSES, COLOURS, PATTERNS, STUFF, STUFF_NOUNS, THINGS, UNSEEN_SETS, held_out, make_scene, read_held_out, scene_rng,
    write_split,
)
from synseg.synthetic.world import MAX_THINGS, pattern_mask
from synseg.research.world import tiny_clip


def test_vocabulary_is_large_enough_and_split_cleanly() -> None:
    """Every held-out set holds out one pattern per colour and one colour per pattern, so each word is seen in
    training; no two sets share a pair."""
    assert len(THINGS) >= 30 and len(STUFF) >= 5
    assert CLASSES == STUFF + THINGS and len(set(CLASSES)) == len(CLASSES)
    assert set(UNSEEN_SETS) >= {"a", "b"} and held_out() == held_out("a")
    for name, pairs in UNSEEN_SETS.items():
        held = held_out(name)
        seen, unseen = set(held.seen_things), set(held.unseen_things)
        assert seen.isdisjoint(unseen) and seen | unseen == set(THINGS) and len(unseen) == len(pairs) == len(COLOURS)
        assert {c for c, _ in pairs} == set(COLOURS) and {p for _, p in pairs} == set(PATTERNS), name
        seen_words = {word for phrase in seen for word in phrase.split()}
        assert all(set(phrase.split()) <= seen_words for phrase in unseen), name
    assert all(UNSEEN_SETS[a].isdisjoint(UNSEEN_SETS[b]) for a in UNSEEN_SETS for b in UNSEEN_SETS if a < b)
    with pytest.raises(UserError, match="held-out set"):
        held_out("z")


def test_same_seed_same_scene_and_different_seed_different_scene() -> None:
    a, b, c = make_scene(7), make_scene(np.random.default_rng(7)), make_scene(8)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label_map, b.label_map)
    assert a.caption == b.caption and a.objects == b.objects
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("size", [64, 128])
def test_ground_truth_matches_the_pixels(size: int) -> None:
    palette = np.array(list(COLOURS.values()), dtype=np.float64)
    counts = set()
    for index in range(60):
        scene = make_scene(scene_rng(3, index), size)
        assert scene.image.shape == (size, size, 3) and scene.image.dtype == np.uint8
        assert scene.label_map.shape == (size, size)
        assert 1 <= len(scene.objects) <= MAX_THINGS
        counts.add(len(scene.objects))
        assert len({thing.phrase for thing in scene.objects}) == len(scene.objects)
        present = set(np.unique(scene.label_map).tolist())
        assert present <= {CLASSES.index(scene.stuff)} | {thing.class_index for thing in scene.objects}
        for thing in scene.objects:
            pixels = scene.image[scene.label_map == thing.class_index].astype(np.float64)
            assert len(pixels) == thing.pixels > 0
            darker = pixels[pixels.sum(1) <= np.median(pixels.sum(1))]  # the colour itself, not its light tint
            nearest = np.linalg.norm(palette[None] - darker.mean(0)[None], axis=2).argmin()
            assert list(COLOURS)[nearest] == thing.colour
    assert counts == set(range(1, MAX_THINGS + 1))


def test_every_pattern_is_a_motif_a_patch_holds_and_paint_is_plain() -> None:
    tints = {p: pattern_mask(p, (32.0, 32.0), (0.0, 0.0), 64) for p in PATTERNS}
    assert not tints["paint"].any()
    for name, tint in tints.items():
        if name != "paint":
            shares = tint.reshape(8, 8, 8, 8).mean(axis=(1, 3))  # per 8x8 patch
            assert 0.1 < tint.mean() < 0.6 and (shares > 0).all(), name
    assert len({tint.tobytes() for tint in tints.values()}) == len(PATTERNS)


@pytest.mark.parametrize("unseen, other", [("a", "b"), ("b", "a")])
def test_unseen_things_never_reach_training_images_or_captions(unseen: str, other: str) -> None:
    """A training split never shows or names its set's unseen things, and shows those of another set."""
    held = held_out(unseen)
    unseen_ids = {CLASSES.index(phrase) for phrase in held.unseen_things}
    train_phrases, test_phrases = set(), set()
    for index in range(200):
        scene = make_scene(scene_rng(5, index), 64, "train", unseen=unseen)
        assert unseen_ids.isdisjoint(np.unique(scene.label_map).tolist())
        caption = scene.caption.lower()
        assert not any(phrase in caption for phrase in held.unseen_things), caption
        train_phrases |= {thing.phrase for thing in scene.objects}
        test_phrases |= {thing.phrase for thing in make_scene(scene_rng(5, index), 64, "test", unseen=unseen).objects}
    assert set(held.unseen_things) <= test_phrases
    assert train_phrases == set(held.seen_things) >= set(held_out(other).unseen_things)


def test_captions_are_varied_and_noisy() -> None:
    scenes = [make_scene(scene_rng(11, index)) for index in range(200)]
    captions = [scene.caption for scene in scenes]
    assert len(set(captions)) > 190
    assert any(c.lower().startswith(("a view of", "stock photo of")) for c in captions)
    assert any("in the background" in c for c in captions)
    left_out = sum(sum(t.phrase in s.caption.lower() for t in s.objects) < len(s.objects) for s in scenes)
    assert 20 < left_out < 180


def test_stuff_and_things_can_be_pinned_but_not_to_unseen_ones_in_training() -> None:
    scene = make_scene(4, 64, "train", stuff="snow", things=["red stripes", "blue dots"])
    assert scene.stuff == "snow" and {t.phrase for t in scene.objects} <= {"red stripes", "blue dots"}
    unseen, seen = held_out().unseen_things, held_out().seen_things
    assert make_scene(4, 64, "test", things=[unseen[0]]).objects[0].phrase == unseen[0]
    for bad in ([unseen[0]], [], ["red stripes", "red stripes"], ["pink moon"], list(seen[:6])):
        with pytest.raises(UserError):
            make_scene(4, 64, "train", things=bad)
    assert all(len(make_scene(scene_rng(4, i), 64, max_things=2).objects) <= 2 for i in range(20))


def test_bad_split_size_or_stuff_is_a_user_error() -> None:
    with pytest.raises(UserError):
        make_scene(0, 64, "val")
    with pytest.raises(UserError):
        make_scene(0, 8)
    with pytest.raises(UserError):
        make_scene(0, 64, stuff="lava")
    with pytest.raises(UserError):
        make_scene(0, 64, max_things=6)


def test_writer_produces_a_voc_like_layout(tmp_path) -> None:
    root = write_split(tmp_path / "world", 5, seed=2, split="test")
    names = (root / "ImageSets" / "Segmentation" / "test.txt").read_text().split()
    assert len(names) == 5 and (root / "classes.txt").read_text().splitlines() == list(CLASSES)
    records = [json.loads(line) for line in (root / "captions.jsonl").read_text().splitlines()]
    assert [r["image"] for r in records] == [f"JPEGImages/{name}.png" for name in names]
    for index, (name, record) in enumerate(zip(names, records)):
        scene = make_scene(scene_rng(2, index), 64, "test")
        with Image.open(root / record["image"]) as image:
            assert np.array_equal(np.asarray(image), scene.image)
        with Image.open(root / "SegmentationClass" / f"{name}.png") as label:
            assert label.mode == "P" and np.array_equal(np.asarray(label), scene.label_map)
        assert record["caption"] == scene.caption
    assert not list(root.rglob("*.tmp"))
    with pytest.raises(UserError, match="own folder"):
        write_split(root, 2, seed=2, split="train")
    assert read_held_out(root) == held_out("a")  # the folder records its held-out set
    assert read_held_out(write_split(tmp_path / "b", 1, seed=2, unseen="b")) == held_out("b")
    (root / "world.json").unlink()
    assert read_held_out(root) == held_out("a")  # a folder from before sets had names holds the default set


def test_architecture_matches_the_brief() -> None:
    config = json.loads((ARCHITECTURES_DIR / f"{WORLD_CLIP}.json").read_text())
    vision, text = config["vision_cfg"], config["text_cfg"]
    assert vision["patch_size"] == 8 and max(vision["width"], text["width"]) <= 256
    assert max(vision["layers"], text["layers"]) <= 6 and 16 <= text["context_length"] <= 32


def test_tiny_clip_learns_and_checkpoint_loads_through_open_clip(tmp_path) -> None:
    config = tiny_clip.WorldClipConfig(steps=40, batch_size=32, warmup=4, seed=1, threads=1, workers=0)
    stream = tiny_clip.PairStream(config, 64)
    pixels, tokens = stream.batch(0)
    assert pixels.shape == (32, 3, 64, 64) and tokens.shape == (32, 32)
    assert torch.equal(stream.batch(1)[0], stream.batch(1)[0])
    threads = torch.get_num_threads()
    model, losses = tiny_clip.train(config, progress=False)
    assert len(losses) == 40 and torch.get_num_threads() == threads
    probe = tiny_clip.PairStream(tiny_clip.WorldClipConfig(seed=99, batch_size=32), 64).batch(0)
    with torch.no_grad():
        held_out = tiny_clip.contrastive_loss(model, *probe).item()
    assert held_out < math.log(32) - 0.25, held_out  # below chance: it matches captions it never saw

    path = tiny_clip.save(model, tmp_path / "world.safetensors", WORLD_CLIP, {"steps": config.steps})
    loaded = open_clip.create_model(WORLD_CLIP, pretrained=str(path))
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    accuracy = tiny_clip.zero_shot(loaded, scenes=40)
    assert accuracy["n_things_seen"] + accuracy["n_things_unseen"] == accuracy["n_stuff"] == 40
    assert accuracy["stuff"] > 0.3  # chance is 1/6


def test_a_world_refuses_a_clip_trained_without_another_held_out_set(tmp_path) -> None:
    """The file records the set it was trained without and its architecture; the shipped CLIP, which has no record,
    counts as set "a" and the 4-block architecture, and a world takes the architecture its CLIP file names."""
    from synseg.research.world.experiment import WorldConfig, model_config, run_experiment
    from synseg.synthetic import SHIPPED_CLIP, WORLD_CLIPS

    deep = WORLD_CLIPS[1]
    path = tiny_clip.save(tiny_clip.create(architecture=deep), tmp_path / "clip-b.safetensors", deep, {"unseen": "b"})
    assert tiny_clip.trained_without(path) == "b" and tiny_clip.trained_without(SHIPPED_CLIP) == "a"
    assert tiny_clip.architecture_of(path) == deep and tiny_clip.architecture_of(SHIPPED_CLIP) == WORLD_CLIP
    assert model_config(WorldConfig(clip=str(path), unseen="b")).backbone.name == deep
    for clip, unseen in ((path, "a"), (SHIPPED_CLIP, "b")):
        config = WorldConfig(clip=str(clip), unseen=unseen, variants=("Chance (uniform random labels)",))
        with pytest.raises(UserError, match=f"trained without held-out set '.'.*holds out set '{unseen}'") as error:
            run_experiment(config, tmp_path / "out")
        assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_tiny_clip_command_refuses_a_bad_output_before_training(tmp_path, capsys) -> None:
    assert tiny_clip.main(["--out", str(tmp_path / "model.pt"), "--steps", "1"]) == 2
    assert re.match(r"tiny_clip: error: --out must end in \.safetensors", capsys.readouterr().err)


def test_a_backdrop_puts_a_second_named_stuff_above_the_horizon() -> None:
    scenes = [make_scene(scene_rng(9, index), 64, backdrop=1.0) for index in range(40)]
    for scene in scenes:
        assert scene.backdrop in STUFF and scene.backdrop != scene.stuff
        present = set(np.unique(scene.label_map).tolist())
        assert CLASSES.index(scene.backdrop) in present
        assert scene.label_map[-1, 0] in {CLASSES.index(scene.stuff)} | {t.class_index for t in scene.objects}
    named = sum(any(noun in s.caption.lower() for noun in STUFF_NOUNS[s.backdrop]) for s in scenes)
    assert 20 < named < 40
    plain, same = make_scene(3), make_scene(3, backdrop=0.0)
    assert plain.backdrop is None and np.array_equal(plain.image, same.image) and plain.caption == same.caption
    with pytest.raises(UserError):
        make_scene(0, backdrop=1.5)


WORLD_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "world").glob("*.json"))


@pytest.mark.parametrize("path", WORLD_CONFIGS, ids=lambda path: path.name)
def test_every_shipped_world_config_makes_valid_rows(path) -> None:
    """Each config under configs/world loads as a WorldConfig whose every variant builds its training config."""
    from synseg.config import from_dict
    from synseg.research.world.experiment import WorldConfig, check_rows

    check_rows(from_dict(WorldConfig, {"clip": "world-clip.safetensors", **json.loads(path.read_text())}, path.name))


def test_the_world_rows_and_the_training_recipes_are_valid_data() -> None:
    """rows.json: every row (and every registered training-free method's row) builds its configs, and the default
    table, which holds every training-free method, names only known rows; every recipe builds a TrainConfig."""
    from synseg.methods import list_methods
    from synseg.research.world.experiment import ROWS, TABLE_ROWS, WorldConfig, check_rows
    from synseg.train.config import RECIPES, recipe_config

    check_rows(WorldConfig(clip="world-clip.safetensors", variants=tuple(ROWS)))
    check_rows(WorldConfig(clip="world-clip.safetensors"))
    assert {ROWS[name].get("method") for name in TABLE_ROWS} >= set(list_methods("training-free"))
    assert set(RECIPES) == {"measured", "paper"}
    for name in RECIPES:
        recipe_config(name)


def test_a_row_with_a_bad_field_fails_before_anything_runs(tmp_path) -> None:
    from synseg.research.world.experiment import WorldConfig, run_experiment

    config = WorldConfig(clip="x", variants=("bad",), rows={"bad": {"loss": {"present_share": 2.0}}})
    with pytest.raises(UserError, match="present_share"):
        run_experiment(config, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_default_row_trains_synseg_trains_default_recipe_and_rows_check_verify_and_recipe() -> None:
    """The table's first row is `synseg train`'s default recipe (its model and loss, the world's schedule), and its
    checkpoints segment with verification; `verify: false` needs a checkpoint and `recipe` a known name."""
    from synseg.research.world.experiment import TABLE_ROWS, WorldConfig, check_rows, train_config
    from synseg.train.config import DEFAULT_RECIPE, recipe_config

    config = WorldConfig(clip="world-clip.safetensors")
    trained, recipe = train_config(config, config.row(TABLE_ROWS[0]), 0), recipe_config(DEFAULT_RECIPE)
    assert trained.loss == recipe.loss and trained.model.verify and trained.model.prior == recipe.model.prior
    for row, message in (({"of": "CLS readout (training-free)", "verify": False}, "has no checkpoint"),
                         ({"recipe": "fast"}, "unknown recipe 'fast'"), ({"verify": "yes"}, "true or false")):
        with pytest.raises(UserError, match=message):
            check_rows(WorldConfig(clip="x", variants=("bad",), rows={"bad": row}))
