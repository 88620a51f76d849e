"""Caption sources of both layouts, and the image + phrase dataset: broken images, order, splits and resuming."""
from __future__ import annotations

import dataclasses
import io
import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from synseg.data.captions import CaptionSource, shard_for
from synseg.data.datasets import CaptionPhraseDataset, DataConfig, PhraseLoader, collate_phrases, loader_workers
from synseg.errors import UserError

wds = pytest.importorskip("webdataset", reason="tar shards need webdataset: pip install 'synseg[train]'")

BROKEN = "s1-003"


def _jpeg(seed: int, size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (seed * 37 % 256, seed * 91 % 256, 128)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _words(i: int) -> list[str]:
    return [f"thing{i}", "dog", "cat", "sky", "tree", "road"][: 1 + i % 6]


@pytest.fixture
def shards(tmp_path) -> tuple[Path, Path]:
    """Three shards of 5 samples, one image broken, one sample without caption, and PHRASES.jsonl written as
    `synseg phrases` writes it (one record, s2-004, is missing from its tar)."""
    folder = tmp_path / "shards"
    folder.mkdir()
    phrases = []
    for s in range(3):
        with wds.TarWriter(str(folder / f"{s:05d}.tar")) as sink:
            for i in range(5):
                key = f"s{s}-{i:03d}"
                sample = {"__key__": key, "jpg": b"\xff\xd8 truncated" if key == BROKEN else _jpeg(s * 5 + i)}
                if key != "s0-002":
                    sample["txt"] = f"caption {key}"
                    phrases.append({"key": key, "shard": f"{s:05d}.tar", "phrases": _words(s * 5 + i)})
                if key != "s2-004":
                    sink.write(sample)
    out = tmp_path / "shard_phrases.jsonl"
    out.write_text("".join(json.dumps(line) + "\n" for line in phrases))
    return folder, out


@pytest.fixture
def coco(coco_captions, tmp_path) -> tuple[Path, Path]:
    """The COCO captions folder, with PHRASES.jsonl lines for its 80 images and one for a broken image file."""
    root = tmp_path / "coco"
    (root / "images").mkdir(parents=True)
    lines = []
    for number, line in enumerate((coco_captions / "captions.jsonl").read_text().splitlines()):
        image = json.loads(line)["image"]
        (root / image).symlink_to(coco_captions / image)
        lines.append({"key": image, "image": image, "phrases": _words(number)})
    (root / "images" / "broken.jpg").write_bytes(b"GIF89a nothing")
    lines.append({"key": "broken", "image": "images/broken.jpg", "phrases": ["dog"]})
    (root / "captions.jsonl").write_text("")
    out = tmp_path / "coco_phrases.jsonl"
    out.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root, out


def _take(dataset, batches: int) -> list:
    iterator = iter(dataset)
    return [next(iterator) for _ in range(batches)]


def _keys(batches) -> list[list[str]]:
    return [batch.keys + [f"!{key}" for key in batch.broken] for batch in batches]


def test_source_layouts(shards, coco_captions, tmp_path):
    folder, _ = shards
    (folder.parent / "empty").mkdir()
    assert len(CaptionSource(folder).shards) == 3
    assert CaptionSource(folder / "00001.tar").shards == [str(folder / "00001.tar")]
    assert len(CaptionSource(f"{folder}/{{00000..00002}}.tar").shards) == 3
    records = list(CaptionSource(folder).records())
    assert [r.key for r in records][:3] == ["s0-000", "s0-001", "s0-002"] and len(records) == 14
    assert records[0].captions == ["caption s0-000"] and records[0].location == "00000.tar"
    assert records[2].captions == [] and isinstance(records[0].image, bytes)
    coco = CaptionSource(coco_captions)
    assert coco.layout == "jsonl" and coco.count() == 80
    first = next(coco.records())
    assert len(first.captions) == 5 and first.image.is_file() and first.location == "images/000000000790.jpg"
    assert CaptionSource(coco_captions / "captions.jsonl").root == coco_captions
    for bad, message in [
        (tmp_path / "absent", "not found"),
        (f"{folder}/{{00000..00004}}.tar", "2 of 5 shards not found"),
        (folder.parent / "empty", "neither .tar shards nor a .jsonl"),
    ]:
        with pytest.raises(UserError, match=message):
            CaptionSource(bad)


def test_jsonl_records_accept_caption_or_captions_and_count_bad_lines(tmp_path):
    (tmp_path / "data.jsonl").write_text(
        '{"image": "a.jpg", "caption": "a dog"}\nnot json\n{"image": "b.jpg", "captions": ["a cat", " "]}\n'
        '{"caption": "no image field"}\n{"image": "c.jpg", "key": "k3"}\n'
    )
    source = CaptionSource(tmp_path)
    records = list(source.records())
    assert [(r.key, r.captions) for r in records] == [("a.jpg", ["a dog"]), ("b.jpg", ["a cat"]), ("k3", [])]
    assert source.stats == {"unreadable record": 2}


def test_shard_for_splits_disjointly():
    shards = [f"{i}.tar" for i in range(7)]
    parts = [shard_for(shards, rank, 3) for rank in range(3)]
    assert sorted(sum(parts, [])) == sorted(shards) and parts[0] == ["0.tar", "3.tar", "6.tar"]
    with pytest.raises(UserError):
        shard_for(shards[:2], 0, 3)


def test_collate_keeps_a_ragged_number_of_phrases():
    samples = [(Image.new("RGB", (8, 8), (255, 0, 51)), ["dog"], "a"), (Image.new("L", (8, 8)), ["dog", "cat"], "b")]
    batch = collate_phrases(samples)
    assert batch.images.shape == (2, 3, 8, 8) and batch.images.dtype == torch.float32 and batch.images.is_contiguous()
    assert batch.images[0, :, 3, 3].tolist() == pytest.approx([1.0, 0.0, 0.2]) and batch.images[1].max() == 0
    assert batch.phrases == [["dog"], ["dog", "cat"]]
    assert batch.keys == ["a", "b"] and batch.broken == []
    assert collate_phrases([], image_size=8).images.shape == (0, 3, 8, 8)


def test_tar_dataset_yields_images_and_up_to_k_phrases_and_skips_broken(shards):
    folder, phrases = shards
    config = DataConfig(image_size=32, max_phrases=3, batch_size=4, streams=1, shuffle_buffer=3)
    dataset = CaptionPhraseDataset(phrases, folder, config)
    assert dataset.num_records == 14
    batches = _take(dataset, 7)  # two epochs
    for batch in batches:
        assert batch.images.shape == (len(batch.keys), 3, 32, 32) and batch.images.dtype == torch.float32
        assert 0 <= batch.images.min() and batch.images.max() <= 1
        assert all(1 <= len(p) <= 3 for p in batch.phrases)
    seen = sum(_keys(batches), [])
    assert sorted(seen[:14]) == sorted(seen[14:28])  # an epoch is every record once
    assert {"!" + BROKEN, "!s2-004"} <= set(seen[:14]) and "s0-002" not in str(seen)
    assert dataset.stats["unreadable images"] == 4 and dataset.stats["images"] == 28 - 4
    assert dataset.position == 7


def test_order_is_deterministic_and_differs_by_seed_and_epoch(shards):
    folder, phrases = shards
    config = DataConfig(image_size=16, batch_size=5, streams=2, shuffle_buffer=4)
    first = _keys(_take(CaptionPhraseDataset(phrases, folder, config), 6))
    assert first == _keys(_take(CaptionPhraseDataset(phrases, folder, config), 6))
    other = DataConfig(image_size=16, batch_size=5, streams=2, shuffle_buffer=4, seed=7)
    assert first != _keys(_take(CaptionPhraseDataset(phrases, folder, other), 6))


@pytest.mark.parametrize("streams", [1, 2, 4])
def test_resume_continues_with_exactly_the_batches_that_were_next(shards, streams):
    folder, phrases = shards
    config = DataConfig(image_size=16, batch_size=3, streams=streams, workers=0, shuffle_buffer=4)
    straight = _keys(_take(CaptionPhraseDataset(phrases, folder, config), 11))
    interrupted = CaptionPhraseDataset(phrases, folder, config)
    _take(interrupted, 5)
    state = interrupted.state_dict()
    assert state["batch"] == 5
    resumed = CaptionPhraseDataset(phrases, folder, config)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    assert _keys(_take(resumed, 6)) == straight[5:]


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_any_number_of_worker_processes_gives_the_batches_of_one_process(shards, workers):
    """The data order is the streams', whatever the machine's loader processes: a run resumed with other workers
    (or on a machine where "auto" picks another number) reads the same batches."""
    folder, phrases = shards
    config = DataConfig(image_size=16, batch_size=3, streams=4, workers=0, shuffle_buffer=4)
    expected = _keys(_take(CaptionPhraseDataset(phrases, folder, config), 9))
    dataset = CaptionPhraseDataset(phrases, folder, dataclasses.replace(config, workers=workers))
    dataset.load_state_dict({**dataset.state_dict(), "batch": 3})
    loader = PhraseLoader(dataset)
    assert _keys(_take(loader, 6)) == expected[3:]
    assert loader.state_dict()["batch"] == 9 and dataset.stats["images"] + dataset.stats["unreadable images"] == 18


def test_loader_workers_divide_the_streams(shards, monkeypatch):
    folder, phrases = shards
    with pytest.raises(UserError, match="workers must divide the 4 streams of a rank .*choose from 1, 2, 4"):
        CaptionPhraseDataset(phrases, folder, DataConfig(streams=4, workers=3))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert loader_workers("auto", 24) == 12  # 15 cores to spare; 12 is the largest divisor of 24 below
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert loader_workers("auto", 24) == 1 and loader_workers("auto", 14) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert loader_workers("auto", 24) == 0  # no core to spare: the training process reads its own batches
    assert CaptionPhraseDataset(phrases, folder).streams == 14  # "auto": one stream per record of these 14


def test_resume_with_other_settings_fails_loudly(shards):
    folder, phrases = shards
    state = CaptionPhraseDataset(phrases, folder, DataConfig(batch_size=3, streams=1)).state_dict()
    with pytest.raises(UserError, match="batch_size was 3, now 4"):
        CaptionPhraseDataset(phrases, folder, DataConfig(batch_size=4, streams=1)).load_state_dict(state)
    before_streams = {**{k: v for k, v in state.items() if k != "streams"}, "workers": 4}  # saved by older versions
    with pytest.raises(UserError, match=r"streams was 4, now 1 \(set streams to 4 in the config\)"):
        CaptionPhraseDataset(phrases, folder, DataConfig(batch_size=3, streams=1)).load_state_dict(before_streams)


@pytest.mark.parametrize("workers", [1, 2])
def test_ranks_read_disjoint_records_that_cover_an_epoch(shards, workers):
    folder, phrases = shards
    config = DataConfig(image_size=16, batch_size=1, streams=workers, shuffle_buffer=2)
    per_rank = []
    for rank in range(2):
        dataset = CaptionPhraseDataset(phrases, folder, config, rank=rank, world_size=2)
        slots = range(rank * dataset.streams, (rank + 1) * dataset.streams)  # this rank's streams, epoch 0
        per_rank.append([e.key for slot in slots for _, entries in dataset._epoch_units(0, slot) for e in entries()])
    assert not set(per_rank[0]) & set(per_rank[1])
    assert len(per_rank[0]) + len(per_rank[1]) == 14 == len(set(per_rank[0]) | set(per_rank[1]))


def test_phrases_made_from_another_layout_are_refused(shards, coco):
    folder, tar_phrases = shards
    root, coco_phrases = coco
    with pytest.raises(UserError, match="made from tar shards, but the images given are a jsonl folder"):
        CaptionPhraseDataset(tar_phrases, root)
    with pytest.raises(UserError, match="made from a jsonl folder"):
        CaptionPhraseDataset(coco_phrases, folder)
    with pytest.raises(UserError, match="cannot feed"):
        CaptionPhraseDataset(tar_phrases, folder, DataConfig(streams=8), rank=0, world_size=2)


@pytest.mark.parametrize("resize", ["stretch", "crop"])
def test_real_coco_folder(coco, resize):
    root, phrases = coco
    config = DataConfig(image_size=48, max_phrases=2, batch_size=27, streams=1, resize=resize)
    dataset = CaptionPhraseDataset(phrases, root, config)
    batches = _take(dataset, 3)
    assert sorted(sum(_keys(batches), [])) == sorted([f"images/{p.name}" for p in (root / "images").glob("0*.jpg")]
                                                     + ["!broken"])
    assert dataset.stats == {"images": 80, "unreadable images": 1}
    images = torch.cat([batch.images for batch in batches])
    assert images.shape == (80, 3, 48, 48) and images.std() > 0.1
    assert all(1 <= len(p) <= 2 for batch in batches for p in batch.phrases)
