"""Caption records from the two layouts training data comes in.

- webdataset tar shards as img2dataset writes them: `KEY.jpg` (or png/webp), `KEY.txt` (the caption), `KEY.json`;
- a folder holding one jsonl of `{"image": relative/path.jpg, "caption": str}` or `{"image": ..., "captions": [str]}`
  lines (COCO's layout), optionally with a `"key"`; the image path is the key otherwise.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from PIL import Image

from synseg.errors import UserError
from synseg.io import decode_text, open_image, open_lines, to_rgb

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def import_webdataset():
    """webdataset is an optional dependency (extra `train`): import it only when tar shards are read."""
    try:
        import webdataset
    except ImportError:
        raise UserError("reading tar shards needs webdataset: pip install 'synseg[train]'") from None
    return webdataset


def decode_image(data: bytes | Path, draft: int | None = None) -> Image.Image:
    """Decode encoded bytes or a file to RGB.

    `draft` lets JPEG decode at the smallest DCT scale that still leaves both sides >= draft pixels (faster, for
    training images that are resized to that size anyway); other formats ignore it.
    """
    with open_image(data, data if isinstance(data, Path) else f"of {len(data)} bytes") as image:
        if draft:
            image.draft("RGB", (draft, draft))
        image.load()
        return to_rgb(image)


@dataclass(frozen=True)
class CaptionRecord:
    """One image and its captions.

    `image` is the encoded bytes (tar shards) or a file path (jsonl folder), None when the sample has no image;
    `location` is the shard's file name (tar shards) or the jsonl's `image` field, as written to PHRASES.jsonl.
    """

    key: str
    captions: list[str]
    image: bytes | Path | None
    location: str


def shard_name(shard: str) -> str:
    """Shards are matched by file name, so PHRASES.jsonl stays valid when the shard folder moves."""
    return os.path.basename(shard)


def shard_for(shards: Sequence[str], rank: int, world: int) -> list[str]:
    """The shards that one of `world` readers (data-parallel ranks, or rank x worker slots) reads: every world-th."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in [0, {world})")
    if len(shards) < world:
        raise UserError(f"{len(shards)} shards cannot be split over {world} readers: use more shards or fewer readers")
    return list(shards[rank::world])


class CaptionSource:
    """INPUT resolved to its layout: a .tar file, a brace pattern of shards (`shards/{00000..00009}.tar`), a folder
    of .tar files, a folder holding one .jsonl, or a .jsonl file (image paths relative to the jsonl's folder).

    Entries that cannot be read at all are skipped: a malformed jsonl line is counted in `stats`; a tar that is cut
    short or damaged is read up to the damage and named in `damaged_shards` (how many samples the damage hid is
    unknowable).
    """

    def __init__(self, spec: str | os.PathLike):
        self.spec = str(spec)
        self.stats: Counter[str] = Counter()
        self.damaged_shards: list[str] = []
        self.shards: list[str] = []
        self.jsonl: Path | None = None
        path = Path(spec)
        if "{" in self.spec and ".tar" in self.spec:
            self.shards = import_webdataset().shardlists.expand_urls(self.spec)
            missing = [shard for shard in self.shards if not Path(shard).is_file()]
            if missing:
                raise UserError(f"{len(missing)} of {len(self.shards)} shards not found, e.g. {missing[0]}")
        elif path.is_file() and path.suffix == ".tar":
            self.shards = [str(path)]
        elif path.is_file() and path.suffix == ".jsonl":
            self.jsonl = path
        elif path.is_dir():
            self.shards = [str(tar) for tar in sorted(path.glob("*.tar"))]
            jsonls = sorted(path.glob("*.jsonl"))
            if not self.shards:
                if not jsonls:
                    raise UserError(f"{path} holds neither .tar shards nor a .jsonl of {{image, caption(s)}}")
                if len(jsonls) > 1:
                    raise UserError(f"{path} holds {len(jsonls)} .jsonl files: pass the one to read")
                self.jsonl = jsonls[0]
        elif not path.exists():
            raise UserError(f"input not found: {spec}")
        else:
            raise UserError(f"cannot read {spec}: expected .tar shards, a shard pattern, a folder or a .jsonl")
        names = Counter(shard_name(shard) for shard in self.shards)
        clash = next((name for name, count in names.items() if count > 1), None)
        if clash:
            raise UserError(f"two shards are named {clash}: shards are matched by file name, so names must be unique")

    @property
    def layout(self) -> str:
        return "jsonl" if self.jsonl else "shards"

    @property
    def root(self) -> Path:
        """The folder that the jsonl's image paths are relative to."""
        assert self.jsonl is not None
        return self.jsonl.parent

    def shard_path(self, name: str) -> str | None:
        return next((shard for shard in self.shards if shard_name(shard) == name), None)

    def count(self) -> int | None:
        """Number of records, where it is cheap to know (jsonl lines), for progress bars."""
        if not self.jsonl:
            return None
        with open_lines(self.jsonl, "captions file") as lines:
            return sum(1 for line in lines if line.strip())

    def records(self) -> Iterator[CaptionRecord]:
        if self.jsonl:
            yield from self._jsonl_records()
        else:
            for shard in self.shards:
                yield from self.shard_records(shard)

    def shard_records(self, shard: str) -> Iterator[CaptionRecord]:
        """Samples of one tar shard in stored order; a sample without image or caption comes with None / []."""
        wds = import_webdataset()

        name = shard_name(shard)

        def skip(error: Exception) -> bool:  # webdataset reports one read error more than once
            if name not in self.damaged_shards:
                self.damaged_shards.append(name)
            return True

        for sample in wds.tarfile_samples([{"url": shard}], handler=skip):
            image = next((sample[ext] for ext in IMAGE_EXTENSIONS if sample.get(ext)), None)
            yield CaptionRecord(sample["__key__"], _tar_captions(sample), image, name)

    def _jsonl_records(self) -> Iterator[CaptionRecord]:
        with open_lines(self.jsonl, "captions file") as lines:
            for line in lines:
                if not line.strip():
                    continue
                try:
                    item = json.loads(line.decode("utf-8", errors="replace"))
                except json.JSONDecodeError:
                    item = None
                if not isinstance(item, dict) or not isinstance(item.get("image"), str):
                    self.stats["unreadable record"] += 1
                    continue
                captions = item.get("captions", item.get("caption"))
                captions = [captions] if isinstance(captions, str) else captions if isinstance(captions, list) else []
                captions = [text.strip() for text in captions if isinstance(text, str) and text.strip()]
                image = item["image"]
                yield CaptionRecord(str(item.get("key", image)), captions, self.root / image, image)


def _tar_captions(sample: dict) -> list[str]:
    """img2dataset writes the caption to KEY.txt and also into KEY.json; read the json only when txt is missing."""
    text = sample.get("txt")
    if text:
        text = decode_text(text, sample["__key__"], errors="replace")
    elif sample.get("json"):
        try:
            text = json.loads(decode_text(sample["json"], sample["__key__"], errors="replace")).get("caption")
        except (ValueError, AttributeError):
            text = None
    return [text.strip()] if isinstance(text, str) and text.strip() else []
