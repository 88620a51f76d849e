"""The training loop: frozen CLIP features in, FSS + MCCL loss, AdamW with warm-up and cosine decay, resumable."""
from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from synseg.card import model_card
from synseg.checkpoint import load_weights, save_model, write_checkpoint_files
from synseg.config import from_dict, read_json, to_dict, write_json
from synseg.data.datasets import CaptionPhraseDataset, DataConfig, PhraseLoader
from synseg.distributed import every_rank, init_distributed, place
from synseg.errors import UserError
from synseg.io import atomic_path, staged_dir
from synseg.train.losses import absent_pairs, caption_readout_loss, mccl_loss
from synseg.models.fss import token_activations, token_log_inactivity
from synseg.models.synseg import SynSeg, build_synseg
from synseg.train.cache import FeatureCache
from synseg.train.config import TrainConfig

LAST, FINAL, STATE = "last", "final", "train_state.pt"


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on GPUs by default ("auto"), or wherever "bf16" asks for it (CPU too); None: fp32."""
    return torch.bfloat16 if precision == "bf16" or (precision == "auto" and device.type == "cuda") else None


def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to zero at the last iteration."""
    if step < config.warmup:
        return (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.iterations - config.warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def rng_state(device: torch.device) -> dict:
    """This process's RNG states; on a GPU only the state of the one it trains on (each rank has its own)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "gauss": gauss}
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore `rng_state`'s states. The CUDA state is restored on this process's GPU only: a machine with fewer (or
    no) GPUs than the one that saved resumes all the same."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(state["python"])
    cuda = state.get("cuda")
    if isinstance(cuda, (list, tuple)):  # checkpoints before per-rank states held one state per visible GPU
        cuda = cuda[0] if cuda else None
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class StepInputs:
    """What the frozen CLIP gives one batch: its image tokens and its phrases' embeddings."""

    tokens: list[torch.Tensor]  # the image tower's tokens [B, 1 + HW, width] of each of the model's feature_layers
    text: torch.Tensor  # [N, E] fp32 embedding of every phrase of the batch, image by image
    image_index: torch.Tensor  # [N] the image each phrase belongs to
    readout: torch.Tensor | None = None  # [B, HW, E] the per-token CLS readout, when the config reads it (needs_readout)


def needs_readout(config: TrainConfig) -> bool:
    """Whether a step reads the frozen CLIP's per-token readout: as the prior, as pseudo-masks, or to pick absent
    phrases. It is image-only, so it belongs to the frozen inputs, and a feature cache keeps it."""
    return config.model.prior != "none" or bool(config.loss.caption_readout) or config.loss.absent_choice == "hard"


def feature_cache(root: str | Path, model: SynSeg, config: TrainConfig) -> FeatureCache:
    """The cache a step of `config` reads: the model's feature layers and, when the step reads it, the readout."""
    return FeatureCache(root, model.backbone, config.phrase_templates, model.feature_layers,
                        model.feature_readout if needs_readout(config) else None)


class TrainStep:
    """What one training step computes, phase by phase: `inputs` (the frozen CLIP's image tokens and phrase embeddings,
    computed, or read from a FeatureCache), `loss_terms` (absent pairs, the decoder and FSS forward, every loss term),
    `backward` and `update` (AdamW, then the learning-rate schedule). `Trainer.fit` runs the phases in that order on
    every batch; `synseg bench --train` times each (synseg.research.speed.train_step)."""

    def __init__(self, config: TrainConfig, model: SynSeg, device: torch.device, cache: FeatureCache | None = None,
                 net: torch.nn.Module | None = None) -> None:
        self.config = config
        self.model = model
        self.net = model if net is None else net  # the model, or its DistributedDataParallel wrapper
        self.device = device
        self.cache = cache
        self.amp = autocast_dtype(config.precision, device)
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_factor(step, config))

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.amp or torch.bfloat16, enabled=self.amp is not None)

    def features(self, images: torch.Tensor, keys: list[str]) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """The images' tokens of the model's feature_layers, and their readout when the config reads it."""
        pixels = self.model.backbone.normalize(images.to(self.device, non_blocking=True))
        readout = None
        if self.cache is not None:
            tokens, readout = self.cache.encode(pixels, keys)
        else:
            tokens = self.model.backbone.encode_image(pixels, self.model.feature_layers)
        if readout is None and needs_readout(self.config):
            readout = self.model.feature_readout(tokens)
        return tokens, readout

    def text(self, phrases: list[str]) -> torch.Tensor:
        """Embeddings of the batch's phrases, computed together for this batch alone (or read from the cache): a
        phrase's embedding then depends only on its batch, which a resumed run replays, not on which earlier batch
        first held it (a matmul's rounding depends on its other rows). Nothing grows from step to step."""
        if self.cache is not None:
            return self.cache.embed_phrases(phrases)
        unique = list(dict.fromkeys(phrases))
        embedded = self.model.backbone.embed_texts(unique, self.config.phrase_templates)
        row = {phrase: i for i, phrase in enumerate(unique)}
        return embedded[torch.tensor([row[p] for p in phrases], device=embedded.device)]

    def inputs(self, images: torch.Tensor, phrases: list[list[str]], keys: list[str]) -> StepInputs:
        """The frozen part of a batch ([B, 3, S, S] images in [0, 1], each image's phrases, its cache key): under bf16
        autocast the frozen CLIP runs in bf16; the phrase embeddings come back fp32."""
        flat = [p for ps in phrases for p in ps]
        image_index = torch.tensor([i for i, ps in enumerate(phrases) for _ in ps], device=self.device)
        with self.autocast():
            tokens, readout = self.features(images, keys)
            text = self.text(flat).float()
        return StepInputs(tokens, text, image_index, readout)

    def loss_terms(self, inputs: StepInputs, step: int) -> dict[str, torch.Tensor]:
        """The loss terms of one batch at iteration `step` (which terms are on, L2-L4's ramp). Under bf16 autocast the
        decoder runs in bf16; the logits, their sigmoid, the pooling and every loss term in fp32 (`token_activations`,
        `synergy_vectors`)."""
        tokens, text, image_index = inputs.tokens, inputs.text, inputs.image_index
        pairs_text, pairs_image = text, image_index
        if self.config.loss.suppresses_absent(step):
            hardness = None
            if self.config.loss.absent_choice == "hard":
                hardness = torch.einsum("bte,ne->bnt", inputs.readout, F.normalize(text, dim=-1)).amax(-1)
            absent_image, absent_phrase = absent_pairs(text, image_index, self.config.loss, hardness)
            pairs_text, pairs_image = torch.cat([text, text[absent_phrase]]), torch.cat([image_index, absent_image])
        named = len(text)
        with self.autocast():
            out = self.net(tokens, pairs_text, pairs_image, named,
                           with_readout=bool(self.config.loss.caption_readout), readout=inputs.readout)
        patch = self.model.backbone.patch_size
        absent = token_log_inactivity(out.logits[named:], patch)
        present = token_activations(out.logits[:named], patch) if self.config.loss.present_boost else None
        pseudo = (caption_readout_loss(out.logits[:named], out.readout[:named], image_index)
                  if self.config.loss.caption_readout else None)
        return mccl_loss(out.foreground, out.background, text, image_index, self.config.loss,
                         self.config.loss.pairwise_scale(step), absent, present, pseudo)

    def backward(self, terms: dict[str, torch.Tensor]) -> None:
        """Gradients of terms["total"], the previous step's dropped first."""
        self.optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()

    def update(self) -> None:
        """One AdamW step, then the schedule's."""
        self.optimizer.step()
        self.scheduler.step()


def resumable_fields(config: TrainConfig) -> dict:
    """The config's fields that a resume must keep: all but `workers` (loader processes do not change the data)."""
    return {name: value for name, value in to_dict(config).items() if name != "workers"}


class Trainer:
    """One process of a (possibly distributed) run. Only rank 0 writes checkpoints and logs."""

    def __init__(
        self, config: TrainConfig, data: str, phrases: str, out: str | Path, device: torch.device, cache: str | Path | None = None
    ) -> None:
        self.config = config
        self.source = data
        self.out = Path(out)
        self.device = device = place(device)
        self.dist = init_distributed(device)
        if config.batch_size % self.dist.world:
            raise UserError(f"batch size {config.batch_size} does not split evenly over {self.dist.world} processes")
        seed_everything(config.seed)
        self.model: SynSeg = build_synseg(config.model).to(device)
        if (config.loss.caption_readout or config.loss.absent_choice == "hard") and not self.model.block_layers:
            raise UserError("loss.caption_readout and absent_choice 'hard' need the readout's block tokens: "
                            "model.pool_source 'attention' or model.prior 'readout'")
        data_config = DataConfig(
            image_size=self.model.backbone.image_size, max_phrases=config.max_phrases,
            batch_size=config.batch_size // self.dist.world, streams=config.streams, workers=config.workers,
            seed=config.seed, resize=config.resize, shuffle_buffer=config.shuffle_buffer,
        )
        dataset = CaptionPhraseDataset(phrases, data, data_config, rank=self.dist.rank, world_size=self.dist.world)
        self.data = PhraseLoader(dataset, pin_memory=device.type == "cuda")
        self.cache = feature_cache(cache, self.model, config) if cache else None
        net = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None) if self.dist.world > 1 else self.model
        self.steps = TrainStep(config, self.model, device, self.cache, net)
        self.optimizer, self.scheduler, self.net = self.steps.optimizer, self.steps.scheduler, net
        self.step = 0

    # -- state ---------------------------------------------------------------------------------------------------------
    def save(self, name: str) -> Path:
        """Atomic: model + config (loadable by `synseg segment`), plus everything a resume needs, with every rank's RNG
        states (each rank draws its own dropout masks). Every rank calls it; rank 0 writes."""
        states = [rng_state(self.device)]
        if self.dist.world > 1:
            states = [None] * self.dist.world
            dist.all_gather_object(states, rng_state(self.device))
        target = self.out / name
        if not self.dist.main:
            return target
        with staged_dir(target) as staging:
            write_checkpoint_files(self.model, staging)
            write_json(to_dict(self.config), staging / "train_config.json")
            state = {
                "step": self.step,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": states,
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
        if resumable_fields(saved) != resumable_fields(self.config):
            raise UserError(f"--resume: {folder} was trained with another config; resume with the same --config")
        load_weights(self.model, folder)
        try:
            state = torch.load(folder / STATE, map_location="cpu", weights_only=True)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            step, states = int(state["step"]), state["rng"]
        except UserError:
            raise
        except Exception as error:  # a damaged file or a foreign pickle fails in many ways; none is worth a traceback
            raise UserError(f"--resume: {folder / STATE} is damaged or not synseg's ({error.__class__.__name__}); "
                            f"remove {folder} to restart from the beginning") from None
        self.data.load_state_dict(state["data"])
        states = states if isinstance(states, list) else [states] * self.dist.world
        if len(states) != self.dist.world:
            raise UserError(f"--resume: {folder} was saved by {len(states)} processes, not {self.dist.world}")
        set_rng_state(states[self.dist.rank], self.device)
        self.step = step
        self.truncate_log()

    def truncate_log(self) -> None:
        """Drop log lines written after the checkpoint we resume from (and a line cut short by the kill), so each
        step is logged once."""
        log = self.out / "log.jsonl"
        if self.dist.main and log.exists():
            kept = []
            for line in log.read_text(errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= self.step:
                    kept.append(line)
            with atomic_path(log) as tmp:
                tmp.write_text("".join(line + "\n" for line in kept))

    # -- one step ------------------------------------------------------------------------------------------------------
    @property
    def amp(self) -> torch.dtype | None:
        """The autocast dtype of the step (TrainStep's), None for fp32."""
        return self.steps.amp

    def loss(self, images: torch.Tensor, phrases: list[list[str]], keys: list[str]) -> dict[str, torch.Tensor]:
        """The loss terms of one batch at this step (TrainStep.inputs, then TrainStep.loss_terms)."""
        return self.steps.loss_terms(self.steps.inputs(images, phrases, keys), self.step)

    # -- the loop ------------------------------------------------------------------------------------------------------
    def fit(self) -> SynSeg:
        config = self.config
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_json(to_dict(config), self.out / "config.json")
        self.model.train()
        batches = iter(self.data)
        bar = tqdm(total=config.iterations, initial=self.step, desc="train", unit="it", file=sys.stderr, disable=not self.dist.main)
        started, seen, skipped = time.perf_counter(), 0, 0
        dataset = self.data.dataset
        if self.dist.main:
            bar.write(f"loader per rank: {dataset.streams} record streams, {dataset.workers} worker processes", file=sys.stderr)
        epoch = math.ceil(dataset.num_records / config.batch_size) + dataset.streams  # batches per rank and epoch, and some
        while self.step < config.iterations:
            batch = next(batches)
            if not every_rank(len(batch.keys) > 0, self.device):  # a batch of unreadable images only (counted)
                skipped += 1
                if skipped > epoch:
                    bar.close()  # before the error line, which must be the last one
                    raise UserError(f"no usable image in {skipped} batches in a row, more than an epoch "
                                    f"({dataset.stats['unreadable images']} unreadable images): check --data")
                continue
            skipped = 0
            terms = self.loss(batch.images, batch.phrases, batch.keys)
            self.steps.backward(terms)
            self.steps.update()
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
            if self.step % config.checkpoint_every == 0 or self.step == config.iterations:
                self.save(LAST)
        bar.close()
        if self.dist.main:
            trained = sum(p.numel() for p in self.model.trainable_state_dict().values())
            save_model(self.model, self.out / FINAL, model_card(self.out.name, config, self.source, trained))
        if self.dist.world > 1:
            dist.barrier()
        return self.model
