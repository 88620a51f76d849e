"""Images with their noun phrases, in batches that can be resumed exactly.

A batch is a fixed number of PHRASES.jsonl records (`batch_size`); a record whose image is missing or unreadable is
counted and left out, so a batch can be smaller but never holds different records. That makes the data order a
function of (seed, batch index) alone, whatever breaks: each rank runs `streams` streams ("slots") that loop over the
data epoch after epoch, the loader takes batches from them in turn (in this process or in loader processes, which
do not change the order), and resuming at batch n only skips a known number of records per stream, without
decoding them.

Tar shards are streamed (each shard once per epoch, per stream), shuffled through a buffer; a jsonl folder is read in
a fresh permutation per epoch. Images are resized to SxS ("stretch", the default: it keeps every object a phrase names
in view, and the inference path also resizes whole images and quadrants to SxS) or short side to S and centre-cropped
("crop", CLIP's own preprocessing, which can cut off what a phrase names).
"""
from __future__ import annotations

import functools
import itertools
import json
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from synseg.data.captions import CaptionSource, decode_image, import_webdataset, shard_for
from synseg.config import positive_int
from synseg.errors import UserError
from synseg.io import open_lines


# The most record streams "auto" gives a rank: an H100 step takes about 17 loader processes (docs/speed.md), and 24
# has many divisors for `workers` to choose from. Each stream holds its own shuffle buffer.
MAX_STREAMS = 24


@dataclass(frozen=True)
class DataConfig:
    image_size: int = 224
    max_phrases: int = 4  # K: phrases per image; an image with more gets a random K of them each epoch
    batch_size: int = 256  # records per batch and rank
    # Record streams per rank: the data order depends on them. "auto": MAX_STREAMS, or fewer when a rank has fewer
    # records (a function of the data and the number of ranks, never of the machine).
    streams: int | str = "auto"
    # Loader processes per rank, each running streams/workers of the streams (0: in the training process): they do not
    # change the data order. "auto": the largest divisor of the streams that the rank's share of CPU cores allows.
    workers: int | str = "auto"
    seed: int = 42
    resize: str = "stretch"  # "stretch" to SxS, or "crop": short side to S, then centre crop
    shuffle_buffer: int = 1000  # tar shards: samples each stream holds to shuffle a shard


@dataclass
class PhraseBatch:
    images: torch.Tensor  # [B, 3, S, S] float in [0, 1]
    phrases: list[list[str]]  # 1..K phrases per image
    keys: list[str]
    broken: list[str] = field(default_factory=list)  # keys of records in this batch whose image could not be read

    def pin_memory(self) -> PhraseBatch:
        return PhraseBatch(self.images.pin_memory(), self.phrases, self.keys, self.broken)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PhraseBatch:
        return PhraseBatch(self.images.to(device, non_blocking=non_blocking), self.phrases, self.keys, self.broken)


def collate_phrases(
    samples: Sequence[tuple[Image.Image, list[str], str]], image_size: int | None = None
) -> PhraseBatch:
    """(RGB image SxS, phrases, key) samples -> one batch of float images in [0, 1]; phrase lists stay ragged (any
    number of categories per image). The conversion runs in numpy, not torch: when the loader runs in the training
    process, torch's thread pool would contend with training (docs/training.md). `image_size` shapes an empty batch."""
    if not samples:
        if image_size is None:
            raise ValueError("an empty batch needs image_size")
        return PhraseBatch(torch.empty(0, 3, image_size, image_size), [], [])
    images, phrases, keys = zip(*samples)
    array = np.stack([np.asarray(image.convert("RGB")) for image in images]).transpose(0, 3, 1, 2)
    array = array.astype(np.float32, order="C")
    np.multiply(array, 1.0 / 255.0, out=array)
    return PhraseBatch(torch.from_numpy(array), [list(p) for p in phrases], list(keys))


class _Entry(NamedTuple):
    key: str
    phrases: list[str]
    image: bytes | Path | None
    epoch: int


@dataclass(frozen=True)
class _Shard:
    start: int  # byte range of the shard's lines in PHRASES.jsonl
    end: int
    count: int


class CaptionPhraseDataset(IterableDataset):
    """Batches of (images, up to K phrases each, keys) from PHRASES.jsonl and the images it was made from.

    `images` is the INPUT given to `synseg phrases` (tar shards or the jsonl folder; shards may have moved, they are
    matched by file name). Iterating yields `PhraseBatch`es without end; `position` counts the batches taken in this
    process, and `state_dict()` / `load_state_dict()` save and restore it. Use `PhraseLoader` to run the `workers`
    streams in worker processes. `stats` counts images delivered and unreadable ones skipped.
    """

    def __init__(
        self,
        phrases: str | Path,
        images: str | Path,
        config: DataConfig = DataConfig(),
        rank: int | None = None,
        world_size: int | None = None,
    ):
        super().__init__()
        if config.resize not in ("stretch", "crop"):
            raise UserError(f"resize must be 'stretch' or 'crop', not {config.resize!r}")
        sizes = (config.image_size, config.max_phrases, config.batch_size, config.shuffle_buffer)
        if min(sizes) < 1:
            raise UserError("image_size, max_phrases, batch_size and shuffle_buffer must be >= 1")
        check_loader(config.streams, config.workers)
        if world_size is None:
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            world_size = torch.distributed.get_world_size() if distributed else 1
            rank = torch.distributed.get_rank() if distributed else 0
        if not 0 <= (rank or 0) < world_size:
            raise UserError(f"rank {rank} is not in [0, {world_size})")
        self.config = config
        self.rank, self.world_size = rank or 0, world_size
        self.source = CaptionSource(images)
        self.phrases_path = Path(phrases)
        self.position = 0
        self.stats: Counter[str] = Counter()
        self._shards: dict[str, _Shard] = {}
        self._items: list[tuple[str, str, list[str]]] = []
        self._index()
        self.streams = config.streams if config.streams != "auto" else min(MAX_STREAMS, max(1, self.num_records // world_size))
        self.slots = world_size * self.streams
        self._check_enough()
        self.workers = loader_workers(config.workers, self.streams)

    @property
    def num_records(self) -> int:
        return sum(shard.count for shard in self._shards.values()) if self._shards else len(self._items)

    def _index(self) -> None:
        """Read PHRASES.jsonl once: a jsonl folder's records are kept; for shards only each shard's byte range."""
        if not self.phrases_path.is_file():
            raise UserError(f"phrases file not found: {self.phrases_path}")
        tar = self.source.layout == "shards"
        wanted, other = ("shard", "image") if tar else ("image", "shard")
        keys: set[str] = set()
        current: str | None = None
        with open_lines(self.phrases_path, "phrases file") as lines:
            offset = lines.tell()
            for number, line in enumerate(lines, 1):
                start, offset = offset, offset + len(line)
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except ValueError:
                    item = None
                phrases = item.get("phrases") if isinstance(item, dict) else None
                if (not isinstance(item, dict) or not isinstance(item.get(wanted), str) or not isinstance(phrases, list)
                        or not phrases or not all(isinstance(p, str) and p for p in phrases)
                        or not isinstance(item.get("key"), (str, int))):
                    if isinstance(item, dict) and other in item:
                        made, given = ("a jsonl folder", "tar shards") if tar else ("tar shards", "a jsonl folder")
                        raise UserError(f"{self.phrases_path} was made from {made}, but the images given are {given}")
                    raise UserError(f"{self.phrases_path}:{number} is not a PHRASES.jsonl line ({wanted}, phrases)")
                key = str(item["key"])
                if tar and item["shard"] != current:
                    if item["shard"] in self._shards:
                        raise UserError(f"{self.phrases_path}: lines of shard {item['shard']} are not together")
                    current, keys = item["shard"], set()
                    self._shards[current] = _Shard(start, offset, 0)
                if key in keys:
                    raise UserError(f"{self.phrases_path}:{number}: key {key} appears twice")
                keys.add(key)
                if tar:
                    self._shards[current] = _Shard(self._shards[current].start, offset, self._shards[current].count + 1)
                else:
                    self._items.append((key, item["image"], [str(p) for p in item["phrases"]]))
        if tar:
            absent = [name for name in self._shards if self.source.shard_path(name) is None]
            if len(absent) == len(self._shards):
                raise UserError(f"none of the shards named in {self.phrases_path} is in {self.source.spec}")
            for name in absent:
                self.stats["records of absent shards"] += self._shards.pop(name).count
        else:
            first = self.source.root / self._items[0][1] if self._items else None
            if first is not None and not first.is_file():
                raise UserError(f"image {first} not found: was {self.phrases_path} made from {self.source.spec}?")

    def _check_enough(self) -> None:
        if self.num_records < self.slots:
            raise UserError(f"{self.num_records} samples cannot feed {self.slots} streams (world size x streams): "
                            f"set fewer streams")

    def state_dict(self) -> dict:
        """The data position, with what it depends on, so that a resume with other settings fails loudly."""
        return {"batch": self.position, **self._order()}

    def load_state_dict(self, state: dict) -> None:
        for name, value in self._order().items():
            # states saved before streams were set apart from worker processes called them "workers"
            saved = state.get(name, state.get("workers")) if name == "streams" else state.get(name)
            if saved != value:
                hint = f" (set streams to {saved} in the config)" if name == "streams" else ""
                raise UserError(f"cannot resume the data order: {name} was {saved}, now {value}{hint}")
        self.position = int(state["batch"])

    def _order(self) -> dict:
        config = self.config
        return {
            "records": self.num_records,
            "seed": config.seed,
            "batch_size": config.batch_size,
            "streams": self.streams,
            "world_size": self.world_size,
            "shuffle_buffer": config.shuffle_buffer,
        }

    def count(self, batch: PhraseBatch) -> None:
        self.stats["images"] += len(batch.keys)
        self.stats["unreadable images"] += len(batch.broken)

    def __iter__(self) -> Iterator[PhraseBatch]:
        start = self.position
        worker = get_worker_info()
        if worker is not None:
            # The DataLoader takes one batch from each worker in turn; worker w runs streams w, w + W, w + 2W, ...
            # (counted from the stream of batch `start`), so batch b still comes from stream b % streams.
            count = worker.num_workers
            if self.streams % count:
                raise UserError(f"{count} loader processes cannot share {self.streams} streams evenly")
            mine = [self._stream_batches((start + worker.id + count * i) % self.streams, start)
                    for i in range(self.streams // count)]
            yield from (next(stream) for stream in itertools.cycle(mine))
        else:
            streams = [self._stream_batches((start + i) % self.streams, start) for i in range(self.streams)]
            for stream in itertools.cycle(streams):
                batch = next(stream)
                self.position += 1
                self.count(batch)
                yield batch

    def _stream_batches(self, stream: int, start: int) -> Iterator[PhraseBatch]:
        """Batches start, start+1, ... that fall to `stream` (batch b comes from stream b % streams)."""
        size = self.config.batch_size
        entries = self._slot_entries(self.rank * self.streams + stream, len(range(stream, start, self.streams)) * size)
        while True:
            samples, broken = [], []
            for entry in itertools.islice(entries, size):
                try:
                    image = self._image(entry.image)
                except UserError:
                    broken.append(entry.key)
                    continue
                samples.append((image, self._choose(entry), entry.key))
            batch = collate_phrases(samples, self.config.image_size)
            batch.broken = broken
            yield batch

    def _image(self, data: bytes | Path | None) -> Image.Image:
        if data is None:
            raise UserError("image missing from its shard")
        size = self.config.image_size
        image = decode_image(data, draft=size)
        if self.config.resize == "crop":
            return TF.center_crop(TF.resize(image, [size], interpolation=TF.InterpolationMode.BICUBIC), [size, size])
        return image.resize((size, size), Image.BICUBIC)

    def _choose(self, entry: _Entry) -> list[str]:
        """Up to K phrases, a different random K each epoch when there are more, in their stored order."""
        k = self.config.max_phrases
        if len(entry.phrases) <= k:
            return list(entry.phrases)
        chosen = random.Random(f"{self.config.seed}:{entry.epoch}:{entry.key}").sample(range(len(entry.phrases)), k)
        return [entry.phrases[i] for i in sorted(chosen)]

    def _slot_entries(self, slot: int, skip: int) -> Iterator[_Entry]:
        """The records of one stream, epoch after epoch, from record number `skip` on."""
        for epoch in itertools.count():
            for count, entries in self._epoch_units(epoch, slot):
                if skip >= count:
                    skip -= count
                    continue
                yield from itertools.islice(entries(), skip, None)
                skip = 0

    def _epoch_units(self, epoch: int, slot: int) -> list[tuple[int, Callable[[], Iterator[_Entry]]]]:
        """(record count, entries) of each piece that `slot` reads in `epoch`, in order."""
        seed = self.config.seed
        if not self._shards:
            order = list(range(len(self._items)))
            random.Random(f"{seed}:{epoch}").shuffle(order)
            mine = order[slot :: self.slots]
            root = self.source.root

            def items() -> Iterator[_Entry]:
                for i in mine:
                    key, image, phrases = self._items[i]
                    yield _Entry(key, phrases, root / image, epoch)

            return [(len(mine), items)]
        names = list(self._shards)
        random.Random(f"{seed}:{epoch}").shuffle(names)
        if len(names) >= self.slots:
            return [
                (self._shards[name].count, functools.partial(self._shard_entries, name, epoch, slot, None))
                for name in shard_for(names, slot, self.slots)
            ]
        # fewer shards than streams: every stream reads every shard and keeps every slots-th record
        units, offset = [], 0
        for name in names:
            count = self._shards[name].count
            first = (slot - offset) % self.slots
            if first < count:
                entries = functools.partial(self._shard_entries, name, epoch, slot, first)
                units.append((len(range(first, count, self.slots)), entries))
            offset += count
        return units

    def _shard_entries(self, name: str, epoch: int, slot: int, first: int | None) -> Iterator[_Entry]:
        """Exactly one entry per PHRASES record of the shard (records missing from the tar come last, without image),
        every slots-th from `first` when given, shuffled through the buffer with a seed of their own."""
        shard = self._shards[name]
        with open(self.phrases_path, "rb") as lines:
            lines.seek(shard.start)
            table = {}
            for line in lines.read(shard.end - shard.start).splitlines():
                if line.strip():
                    item = json.loads(line)
                    table[str(item["key"])] = [str(p) for p in item["phrases"]]

        def entries() -> Iterator[_Entry]:
            for record in self.source.shard_records(self.source.shard_path(name)):
                phrases = table.pop(record.key, None)
                if phrases is not None:
                    yield _Entry(record.key, phrases, record.image, epoch)
            for key, phrases in table.items():
                yield _Entry(key, phrases, None, epoch)

        stream = entries() if first is None else itertools.islice(entries(), first, None, self.slots)
        size = self.config.shuffle_buffer
        rng = random.Random(f"{self.config.seed}:{epoch}:{name}:{slot}")
        return import_webdataset().shuffle(size, initial=size, rng=rng)(stream)


def check_loader(streams: object, workers: object) -> None:
    """One-line errors for `streams` (an integer >= 1 or "auto") and `workers` (>= 0 or "auto"; `loader_workers`
    checks that it divides the streams)."""
    for name, value, low in (("streams", streams, 1), ("workers", workers, 0)):
        if value != "auto":
            positive_int(name, value, low)


def loader_workers(workers: int | str, streams: int) -> int:
    """The loader processes of a rank: `workers` when it divides the streams; for "auto", the largest divisor of the
    streams no larger than this rank's share of the CPU cores less one (the training process keeps a core)."""
    if workers != "auto":
        if workers and streams % workers:
            divisors = ", ".join(str(d) for d in range(1, streams + 1) if streams % d == 0)
            raise UserError(f"workers must divide the {streams} streams of a rank (or be 0); choose from {divisors}")
        return int(workers)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    spare = max(0, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))) - 1)
    return max(d for d in range(min(spare, streams) + 1) if d == 0 or streams % d == 0)


class PhraseLoader:
    """Runs a `CaptionPhraseDataset`'s streams in its `workers` processes (in this one when 0) and keeps the
    dataset's position and stats up to date here, so that `state_dict()` is the position of the batches handed out."""

    def __init__(self, dataset: CaptionPhraseDataset, pin_memory: bool = False, prefetch_factor: int = 2):
        self.dataset = dataset
        self.pin_memory = pin_memory
        self.prefetch_factor = prefetch_factor

    def __iter__(self) -> Iterator[PhraseBatch]:
        workers = self.dataset.workers
        if workers == 0:
            yield from self.dataset
            return
        # Starting workers draws their base seed from `generator`, by default the global RNG: a resumed run, which
        # restores that RNG after the straight run drew from it, would draw other dropout masks from then on. The
        # streams themselves use seeded random.Random only.
        loader = DataLoader(
            self.dataset,
            batch_size=None,
            num_workers=workers,
            pin_memory=self.pin_memory,
            prefetch_factor=self.prefetch_factor,
            generator=torch.Generator().manual_seed(self.dataset.config.seed),
        )
        for batch in loader:
            self.dataset.position += 1
            self.dataset.count(batch)
            yield batch

    def state_dict(self) -> dict:
        return self.dataset.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.dataset.load_state_dict(state)
