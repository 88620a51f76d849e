"""How many training samples one data-loader worker prepares per second, on webdataset shards like CC12M's.

Writes tar shards of JPEGs whose sides are drawn from 256-1024 px (CC12M's images are mostly in that range), with a
caption each, mines their noun phrases with spaCy as `synseg phrases` does, then runs synseg's training loader
(`CaptionPhraseDataset`: read the shard, decode with JPEG draft mode, resize to the model's input, collate) in this
process (one worker's work) and with N worker processes. Phrase embedding is not the loader's work (the trainer embeds
a batch's phrases, or reads them from the feature cache), so it is not timed here.

    python tools/loader_throughput.py --out /tmp/shards --workers 1,2
"""
from __future__ import annotations

import argparse
import io
import json
import tarfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from synseg.data.captions import CaptionSource
from synseg.data.datasets import CaptionPhraseDataset, DataConfig, PhraseLoader
from synseg.data.phrases import PhraseConfig, PhraseExtractor, write_phrases

NOUNS = ("dog", "car", "street", "table", "woman", "tree", "house", "beach", "cup", "bicycle", "sky", "mountain")
ADJECTIVES = ("red", "old", "small", "wooden", "bright", "busy", "quiet", "white")


def photo_like(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    """Smooth colour fields with texture, so that JPEG sizes are a photo's rather than pure noise's."""
    coarse = rng.uniform(0, 255, (max(2, height // 64), max(2, width // 64), 3)).astype(np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.float32)
    image += rng.normal(0, 12, image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def make_shards(out: Path, shards: int, per_shard: int, seed: int = 0) -> dict:
    """`shards` tar files of `per_shard` samples each (key.jpg + key.txt); returns the sizes written."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    sides, sizes = [], []
    for s in range(shards):
        with tarfile.open(out / f"{s:05d}.tar", "w") as tar:
            for i in range(per_shard):
                height, width = (int(v) for v in rng.integers(256, 1025, 2))
                buffer = io.BytesIO()
                photo_like(rng, height, width).save(buffer, format="JPEG", quality=90)
                caption = (f"a {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} next to a {rng.choice(ADJECTIVES)} "
                           f"{rng.choice(NOUNS)} near the {rng.choice(NOUNS)}")
                for name, data in ((f"{s:05d}{i:05d}.jpg", buffer.getvalue()), (f"{s:05d}{i:05d}.txt", caption.encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                sides.append((height, width))
                sizes.append(len(buffer.getvalue()))
    return {"images": len(sizes), "mean_kb": float(np.mean(sizes)) / 1024, "mean_megapixels": float(np.mean([h * w for h, w in sides])) / 1e6}


def loader_rate(data: str, phrases: Path, workers: int, batches: int, batch_size: int, image_size: int) -> float:
    """Samples per second the training loader delivers with `workers` processes (0: in this process), after its
    first batch (worker start-up) is left out."""
    config = DataConfig(image_size=image_size, max_phrases=8, batch_size=batch_size, workers=workers, seed=0)
    loader = PhraseLoader(CaptionPhraseDataset(str(phrases), data, config))
    batches_iter = iter(loader)
    next(batches_iter)
    start, samples = time.perf_counter(), 0
    for _ in range(batches):
        samples += len(next(batches_iter).keys)
    return samples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the shards and their PHRASES.jsonl")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--per-shard", type=int, default=256)
    parser.add_argument("--workers", default="0,2", help="worker counts to time; 0 = in this process (default 0,2)")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()
    phrases = args.out / "phrases.jsonl"
    made = json.loads((args.out / "made.json").read_text()) if (args.out / "made.json").exists() else None
    if made is None:
        made = make_shards(args.out, args.shards, args.per_shard)
        write_phrases(CaptionSource(str(args.out)), phrases, PhraseExtractor(PhraseConfig()))
        (args.out / "made.json").write_text(json.dumps(made))
    print(f"{made['images']} JPEGs, mean {made['mean_kb']:.0f} KB and {made['mean_megapixels']:.2f} megapixels")
    for workers in (int(w) for w in args.workers.split(",")):
        rate = loader_rate(str(args.out), phrases, workers, args.batches, args.batch_size, args.image_size)
        per = rate / max(1, workers)
        print(f"workers {workers}: {rate:.0f} samples/s ({per:.0f} per worker process) at {args.image_size} px")


if __name__ == "__main__":
    main()
