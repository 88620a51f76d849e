"""The training loop: frozen CLIP features in, FSS + MCCL loss, AdamW with warm-up and cosine decay, resumable."""
from __future__ import annotations

import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from synseg.card import model_card
from synseg.checkpoint import load_weights, save_model, write_checkpoint_files
from synseg.config import from_dict, read_json, to_dict, write_json
from synseg.distributed import Distributed, init_distributed
from synseg.data.datasets import CaptionPhraseDataset, DataConfig, PhraseLoader
from synseg.errors import UserError
from synseg.io import staged_dir
from synseg.losses import absent_pairs, mccl_loss
from synseg.models.fss import token_activations
from synseg.models.synseg import SynSeg, build_synseg
from synseg.train.cache import FeatureCache
from synseg.train.config import TrainConfig

LAST, FINAL, STATE = "last", "final", "train_state.pt"


def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to zero at the last iteration."""
    if step < config.warmup:
        return (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.iterations - config.warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "gauss": gauss}
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """One process of a (possibly distributed) run. Only rank 0 writes checkpoints and logs."""

    def __init__(
        self, config: TrainConfig, data: str, phrases: str, out: str | Path, device: torch.device, cache: str | Path | None = None
    ) -> None:
        self.config = config
        self.source = data
        self.out = Path(out)
        self.device = device
        self.dist = init_distributed(device)
        if config.batch_size % self.dist.world:
            raise UserError(f"batch size {config.batch_size} does not split evenly over {self.dist.world} processes")
        seed_everything(config.seed)
        self.model: SynSeg = build_synseg(config.model).to(device)
        data_config = DataConfig(
            image_size=self.model.backbone.image_size, max_phrases=config.max_phrases,
            batch_size=config.batch_size // self.dist.world, workers=config.workers, seed=config.seed,
            resize=config.resize, shuffle_buffer=config.shuffle_buffer,
        )
        dataset = CaptionPhraseDataset(phrases, data, data_config, rank=self.dist.rank, world_size=self.dist.world)
        self.data = PhraseLoader(dataset, pin_memory=device.type == "cuda")
        self.cache = FeatureCache(cache, self.model.backbone, config.phrase_templates, self.model.feature_layers) if cache else None
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_factor(step, config))
        self.net = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None) if self.dist.world > 1 else self.model
        self.step = 0

    # -- state ---------------------------------------------------------------------------------------------------------
    def save(self, name: str) -> Path:
        """Atomic: model + config (loadable by `synseg segment`), plus everything a resume needs."""
        target = self.out / name
        with staged_dir(target) as staging:
            write_checkpoint_files(self.model, staging)
            write_json(to_dict(self.config), staging / "train_config.json")
            state = {
                "step": self.step,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": rng_state(),
                "data": self.data.state_dict(),
            }
            torch.save(state, staging / STATE)
        if self.cache is not None:
            self.cache.save_text()
        return target

    def resume(self) -> None:
        folder = self.out / LAST
        if not (folder / STATE).is_file():
            raise UserError(f"--resume: no checkpoint to resume from in {self.out} (expected {folder / STATE})")
        saved = from_dict(TrainConfig, read_json(folder / "train_config.json"), where=str(folder / "train_config.json"))
        if to_dict(saved) != to_dict(self.config):
            raise UserError(f"--resume: {folder} was trained with another config; resume with the same --config")
        load_weights(self.model, folder)
        state = torch.load(folder / STATE, map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.data.load_state_dict(state["data"])
        set_rng_state(state["rng"])
        self.step = state["step"]
        self.truncate_log()

    def truncate_log(self) -> None:
        """Drop log lines written after the checkpoint we resume from, so each step is logged once."""
        log = self.out / "log.jsonl"
        if self.dist.main and log.exists():
            lines = [line for line in log.read_text().splitlines() if line and json.loads(line)["step"] <= self.step]
            log.write_text("".join(line + "\n" for line in lines))

    # -- one step ------------------------------------------------------------------------------------------------------
    def features(self, images: torch.Tensor, keys: list[str]) -> list[torch.Tensor]:
        pixels = self.model.backbone.normalize(images.to(self.device, non_blocking=True))
        if self.cache is not None:
            return self.cache.encode(pixels, keys)
        return self.model.backbone.encode_image(pixels, self.model.feature_layers)

    def text(self, phrases: list[str]) -> torch.Tensor:
        if self.cache is not None:
            return self.cache.embed_phrases(phrases)
        return self.model.backbone.embed_labels(phrases, self.config.phrase_templates)

    def loss(self, images: torch.Tensor, phrases: list[list[str]], keys: list[str]) -> dict[str, torch.Tensor]:
        tokens = self.features(images, keys)
        flat = [p for ps in phrases for p in ps]
        image_index = torch.tensor([i for i, ps in enumerate(phrases) for _ in ps], device=self.device)
        text = self.text(flat)
        pairs_text, pairs_image = text, image_index
        if self.config.loss.suppresses_absent(self.step):
            absent_image, absent_phrase = absent_pairs(text, image_index, self.config.loss)
            pairs_text, pairs_image = torch.cat([text, text[absent_phrase]]), torch.cat([image_index, absent_image])
        named = len(flat)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            out = self.net(tokens, pairs_text, pairs_image, named)
        maps = token_activations(out.logits, self.model.backbone.patch_size)
        return mccl_loss(out.foreground, out.background, text, image_index, self.config.loss,
                         self.config.loss.pairwise_scale(self.step), maps[named:], maps[:named])

    # -- the loop ------------------------------------------------------------------------------------------------------
    def fit(self) -> SynSeg:
        config = self.config
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_json(to_dict(config), self.out / "config.json")
        self.model.train()
        batches = iter(self.data)
        bar = tqdm(total=config.iterations, initial=self.step, desc="train", unit="it", file=sys.stderr, disable=not self.dist.main)
        started, seen = time.perf_counter(), 0
        while self.step < config.iterations:
            batch = next(batches)
            if not batch.keys:
                continue  # every image of this batch was unreadable (counted in the dataset's stats)
            terms = self.loss(batch.images, batch.phrases, batch.keys)
            self.optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            seen += len(batch.keys) * self.dist.world
            bar.update(1)
            if self.dist.main and (self.step % config.log_every == 0 or self.step == config.iterations):
                record = {"step": self.step, "lr": self.scheduler.get_last_lr()[0],
                          "samples_per_s": round(seen / (time.perf_counter() - started), 3),
                          "unreadable_images": self.data.dataset.stats["unreadable images"],
                          **{k: round(v.item(), 6) for k, v in terms.items()}}
                with open(self.out / "log.jsonl", "a") as log:
                    log.write(json.dumps(record) + "\n")
                bar.set_postfix(loss=f"{record['total']:.4f}")
            if self.dist.main and (self.step % config.checkpoint_every == 0 or self.step == config.iterations):
                self.save(LAST)
        bar.close()
        if self.dist.main:
            trained = sum(p.numel() for p in self.model.trainable_state_dict().values())
            save_model(self.model, self.out / FINAL, model_card(self.out.name, config, self.source, trained))
        if self.dist.world > 1:
            dist.barrier()
        return self.model
