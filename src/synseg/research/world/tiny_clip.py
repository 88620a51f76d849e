"""A tiny open_clip CLIP trained from scratch on the synthetic world, standing in for CLIP weights we cannot download.

The architecture is `synseg-world-clip` (models/architectures/synseg-world-clip.json: 4 image blocks), or
`synseg-world-clip-deep` (12, ViT-B/16's depth) with `--architecture`; the file records it. Training pairs come from
`make_scene` on the fly, captions and all; only the training split's things are ever shown, so the held-out colour x
pattern phrases (the named set `--unseen`, recorded in the file's metadata) measure open-vocabulary transfer. The saved
file is a plain safetensors state dict that `open_clip.create_model("synseg-world-clip", pretrained=file)` loads like
any local CLIP checkpoint.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

from synseg.errors import UserError
from synseg.models.backbone import BackboneConfig  # (importing it registers synseg's architectures with open_clip)
from synseg.io import atomic_path, ensure_writable_dir
from synseg.synthetic import WORLD_CLIP, WORLD_CLIPS
from synseg.synthetic.world import (
    DEFAULT_UNSEEN, STUFF, STUFF_NOUNS, THINGS, UNSEEN_SETS, Scene, Thing, held_out, make_scene, scene_rng,
)

THING_TEMPLATES: tuple[str, ...] = ("{}", "a view of {}", "a photo of {}")
STUFF_TEMPLATES: tuple[str, ...] = ("{}", "a view of {}", "{} in the background")
TRAIN_STREAM, EVAL_STREAM, PATTERN_STREAM = 0, 1, 3


@dataclass
class WorldClipConfig:
    """How the world CLIP is trained (`train`): `steps` batches of `batch_size` pairs, in groups of `group` scenes
    (one drawn, the others its hard negatives); AdamW at `lr` (`warmup` steps of warm-up, then cosine) with
    `weight_decay`; scenes of 1 to `max_things` things drawn from `seed` at the CLIP's input size, never showing the
    held-out set `unseen`; `threads` torch threads and `workers` loader processes. The defaults are sized for two CPU
    cores; docs/world.md gives the time and why scenes are sparser than the experiment's."""

    steps: int = 1500
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 50
    seed: int = 0
    group: int = 4
    max_things: int = 3
    threads: int = 2
    workers: int = 1
    unseen: str = DEFAULT_UNSEEN
    architecture: str = WORLD_CLIP  # one of WORLD_CLIPS


def tokenizer():
    """open_clip's tokenizer at the world CLIP's context length."""
    return open_clip.get_tokenizer(WORLD_CLIP)


def create(pretrained: str | Path | None = None, architecture: str = WORLD_CLIP) -> torch.nn.Module:
    """A world CLIP, random or loaded from a file through open_clip's own loader."""
    return open_clip.create_model(architecture, pretrained=str(pretrained) if pretrained else None)


def scenes_to_pixels(scenes: list[Scene], image_size: int) -> torch.Tensor:
    """Stack scene images as [B, 3, S, S] in [0, 1], resized to the CLIP input size."""
    pixels = torch.from_numpy(np.stack([scene.image for scene in scenes])).permute(0, 3, 1, 2).float() / 255.0
    if pixels.shape[-1] != image_size:
        pixels = F.interpolate(pixels, size=(image_size, image_size), mode="bilinear", antialias=True,
                               align_corners=False)
    return pixels.clamp_(0.0, 1.0)


def normalize(model: torch.nn.Module, pixels01: torch.Tensor) -> torch.Tensor:
    cfg = model.visual.preprocess_cfg
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    return (pixels01 - mean) / std


def _repattern(things: tuple[Thing, ...], rng: np.random.Generator, seen_things: tuple[str, ...]) -> list[str]:
    """The same colours with other (seen) patterns, so captions within a group differ only in their pattern words."""
    chosen: list[str] = []
    for thing in things:
        options = [p for p in seen_things if p.split(" ")[0] == thing.colour and p not in chosen and p != thing.phrase]
        chosen.append(options[rng.integers(len(options))])
    return chosen


class PairStream(IterableDataset):
    """Training batches (pixels in [0, 1], tokens), batch k rebuilt from (seed, k) alone, so runs are repeatable.

    Scenes come in groups that share stuff and colours and differ in patterns: without such hard negatives colour and
    stuff alone tell a batch's pairs apart, and pattern gets almost no gradient.
    """

    def __init__(self, config: WorldClipConfig, image_size: int) -> None:
        self.config, self.image_size = config, image_size
        self.tokenizer = tokenizer()

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        scenes: list[Scene] = []
        for position in range(c.batch_size):
            index = step * c.batch_size + position
            rng = scene_rng(c.seed, index, TRAIN_STREAM)
            if position % c.group == 0:
                scenes.append(make_scene(rng, self.image_size, "train", max_things=c.max_things, unseen=c.unseen))
            else:
                base = scenes[-(position % c.group)]
                things = _repattern(base.objects, scene_rng(c.seed, index, PATTERN_STREAM), held_out(c.unseen).seen_things)
                scenes.append(make_scene(rng, self.image_size, "train", base.stuff, things, unseen=c.unseen))
        return scenes_to_pixels(scenes, self.image_size), self.tokenizer([scene.caption for scene in scenes])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if get_worker_info() is not None:
            torch.set_num_threads(1)
        for step in range(self.config.steps):
            yield self.batch(step)


def _optimizer(model: torch.nn.Module, config: WorldClipConfig) -> torch.optim.AdamW:
    """AdamW with open_clip's rule: no weight decay on gains, biases, norms and the temperature."""
    decay, plain = [], []
    for name, param in model.named_parameters():
        skip = param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (plain if skip else decay).append(param)
    groups = [{"params": plain, "weight_decay": 0.0}, {"params": decay, "weight_decay": config.weight_decay}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98), eps=1e-6)


def _cosine(config: WorldClipConfig):
    def factor(step: int) -> float:
        if step < config.warmup:
            return (step + 1) / config.warmup
        progress = (step - config.warmup) / max(1, config.steps - config.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


def contrastive_loss(model: torch.nn.Module, pixels01: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    image_features, text_features, logit_scale = model(normalize(model, pixels01), tokens)
    return open_clip.loss.ClipLoss()(image_features, text_features, logit_scale)


def train(config: WorldClipConfig, progress: bool = True) -> tuple[torch.nn.Module, list[float]]:
    """Train the world CLIP contrastively on freshly generated pairs; returns the model and the loss per step."""
    if config.steps < 1 or config.batch_size < 2:
        raise UserError("training needs at least 1 step and a batch of at least 2 pairs")
    held_out(config.unseen)  # an unknown set fails before training
    if config.architecture not in WORLD_CLIPS:
        raise UserError(f"unknown world CLIP architecture {config.architecture!r}; choose from {', '.join(WORLD_CLIPS)}")
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _train(config, progress)
    finally:
        torch.set_num_threads(threads)


def _train(config: WorldClipConfig, progress: bool) -> tuple[torch.nn.Module, list[float]]:
    torch.manual_seed(config.seed)
    model = create(architecture=config.architecture)
    model.train()
    image_size = model.visual.preprocess_cfg["size"][0]
    optimizer = _optimizer(model, config)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(config))
    loader = DataLoader(PairStream(config, image_size), batch_size=None, num_workers=config.workers)
    losses: list[float] = []
    bar = tqdm(loader, total=config.steps, desc="training world CLIP", unit="step", disable=not progress)
    for pixels, tokens in bar:
        loss = contrastive_loss(model, pixels, tokens)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    model.eval()
    return model, losses


@torch.no_grad()
def _label_embeddings(model: torch.nn.Module, names: list[str], templates: tuple[str, ...]) -> torch.Tensor:
    texts = [template.format(name) for name in names for template in templates]
    embedded = F.normalize(model.encode_text(tokenizer()(texts)), dim=-1).view(len(names), len(templates), -1)
    return F.normalize(embedded.mean(1), dim=-1)


@torch.no_grad()
def read_scenes(model: torch.nn.Module, scenes: int = 1200, seed: int = 0, scene_size: int = 64,
                max_things: int = WorldClipConfig.max_things, backdrop: float = 0.0) -> Iterator[tuple[Scene, str, str]]:
    """Held-out test-split scenes, each with the CLIP's zero-shot reading: (scene, thing phrase, stuff) whose texts lie
    closest to the image."""
    model.eval()
    image_size = model.visual.preprocess_cfg["size"][0]
    things = _label_embeddings(model, list(THINGS), THING_TEMPLATES)
    stuff = _label_embeddings(model, [STUFF_NOUNS[s][0] for s in STUFF], STUFF_TEMPLATES)
    for start in range(0, scenes, 200):
        batch = [make_scene(scene_rng(seed, i, EVAL_STREAM), scene_size, "test", backdrop=backdrop, max_things=max_things)
                 for i in range(start, min(scenes, start + 200))]
        features = F.normalize(model.encode_image(normalize(model, scenes_to_pixels(batch, image_size))), dim=-1)
        thing_guess = (features @ things.T).argmax(1).tolist()
        stuff_guess = (features @ stuff.T).argmax(1).tolist()
        for scene, thing, place in zip(batch, thing_guess, stuff_guess):
            yield scene, THINGS[thing], STUFF[place]


def zero_shot(model: torch.nn.Module, scenes: int = 1200, seed: int = 0, scene_size: int = 64,
              max_things: int = WorldClipConfig.max_things, backdrop: float = 0.0,
              unseen: str = DEFAULT_UNSEEN) -> dict[str, float]:
    """Accuracy on held-out test-split scenes: the largest thing's phrase among all things (split into the phrases
    seen in training and those of the held-out set `unseen`), and the stuff among all stuff."""
    unseen_things = held_out(unseen).unseen_things
    hits: dict[str, list[bool]] = {"things_seen": [], "things_unseen": [], "stuff": []}
    for scene, thing, place in read_scenes(model, scenes, seed, scene_size, max_things, backdrop):
        hits["stuff"].append(place == scene.stuff)
        target = scene.largest.phrase
        hits["things_unseen" if target in unseen_things else "things_seen"].append(thing == target)
    result = {name: float(np.mean(values)) if values else float("nan") for name, values in hits.items()}
    result.update({f"n_{name}": len(values) for name, values in hits.items()})
    return result


def save(model: torch.nn.Module, path: str | Path, architecture: str, metadata: dict[str, object]) -> Path:
    """Write the state dict as safetensors (never pickle), atomically, with its architecture and training facts in its
    header (each fact as JSON; `unseen` names the held-out set it was trained without, which `trained_without` reads)."""
    path = Path(path)
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"architecture": architecture, **{k: json.dumps(v) for k, v in
                                                                               metadata.items()}})
    return path


def architecture_of(path: str | Path) -> str:
    """The open_clip architecture a world CLIP file records; the shipped files, written before the deeper CLIP
    existed, files that are not safetensors and paths not (yet) written are the 4-block `synseg-world-clip`."""
    if Path(path).suffix != ".safetensors" or not Path(path).is_file():
        return WORLD_CLIP
    with safe_open(str(path), "pt") as handle:
        return (handle.metadata() or {}).get("architecture", WORLD_CLIP)


def backbone_config(path: str | Path) -> BackboneConfig:
    """The frozen backbone a world CLIP file makes: the architecture it records, the file as its weights."""
    return BackboneConfig(architecture_of(path), str(path))


def trained_without(path: str | Path) -> str:
    """The held-out set a world CLIP file was trained without: its `unseen` metadata; a file without that record (the
    shipped CLIP, trained before sets had names, or a file that is not safetensors) counts as the default set."""
    if Path(path).suffix != ".safetensors":
        return DEFAULT_UNSEEN
    with safe_open(str(path), "pt") as handle:
        record = (handle.metadata() or {}).get("unseen")
    return DEFAULT_UNSEEN if record is None else json.loads(record)


def check_unseen(path: str | Path, unseen: str) -> None:
    """UserError unless the world CLIP at `path` was trained without the held-out set `unseen`: a CLIP that saw a
    world's unseen things in training would score them as seen."""
    trained = trained_without(path)
    if trained != unseen:
        raise UserError(f"world CLIP {Path(path).name} was trained without held-out set {trained!r}, but the world "
                        f"holds out set {unseen!r}: use a CLIP trained with `python -m synseg.research.world.tiny_clip "
                        f"--unseen {unseen}` (docs/world.md)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m synseg.research.world.tiny_clip", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="where to write the .safetensors checkpoint")
    parser.add_argument("--steps", type=int, default=WorldClipConfig.steps)
    parser.add_argument("--seed", type=int, default=WorldClipConfig.seed)
    parser.add_argument("--batch-size", type=int, default=WorldClipConfig.batch_size)
    parser.add_argument("--lr", type=float, default=WorldClipConfig.lr)
    parser.add_argument("--eval-scenes", type=int, default=1200, help="held-out scenes for zero-shot accuracy")
    parser.add_argument("--unseen", choices=sorted(UNSEEN_SETS), default=WorldClipConfig.unseen,
                        help=f"the held-out set of colour x pattern pairs never shown (default {WorldClipConfig.unseen})")
    parser.add_argument("--threads", type=int, default=WorldClipConfig.threads, help="torch threads")
    parser.add_argument("--workers", type=int, default=WorldClipConfig.workers, help="processes drawing the scenes")
    parser.add_argument("--architecture", choices=WORLD_CLIPS, default=WORLD_CLIP,
                        help=f"open_clip architecture (default {WORLD_CLIP}: 4 image blocks; the deep one has 12)")
    args = parser.parse_args(argv)
    try:
        if args.out.suffix != ".safetensors":
            raise UserError(f"--out must end in .safetensors so open_clip loads it as such: {args.out}")
        ensure_writable_dir(args.out.resolve().parent)
        config = WorldClipConfig(steps=args.steps, seed=args.seed, batch_size=args.batch_size, lr=args.lr,
                                 warmup=min(WorldClipConfig.warmup, max(1, args.steps // 10)), threads=args.threads,
                                 workers=args.workers, unseen=args.unseen, architecture=args.architecture)
        started = time.perf_counter()
        model, losses = train(config)
        minutes = (time.perf_counter() - started) / 60
        accuracy = zero_shot(model, args.eval_scenes, unseen=config.unseen)
        save(model, args.out, config.architecture, {"config": asdict(config), "unseen": config.unseen,
                                                    "final_loss": losses[-1], "train_minutes": minutes,
                                                    "zero_shot": accuracy})
    except UserError as error:
        print(f"tiny_clip: error: {error}", file=sys.stderr)
        return 2
    print(f"trained {config.steps} steps x {config.batch_size} pairs in {minutes:.1f} min, final loss {losses[-1]:.3f}")
    print(f"zero-shot accuracy on {args.eval_scenes} held-out scenes (held-out set {config.unseen!r}): things seen {accuracy['things_seen']:.1%} "
          f"(n={accuracy['n_things_seen']}, chance {1 / len(THINGS):.1%}), things unseen "
          f"{accuracy['things_unseen']:.1%} (n={accuracy['n_things_unseen']}), stuff {accuracy['stuff']:.1%} "
          f"(chance {1 / len(STUFF):.1%})")
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
