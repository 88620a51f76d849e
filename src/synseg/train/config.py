"""Training configuration; written into RUN_DIR and into every checkpoint."""
from __future__ import annotations

from dataclasses import dataclass, field

from synseg.losses import LossConfig
from synseg.models.synseg import SynSegConfig


@dataclass
class TrainConfig:
    model: SynSegConfig = field(default_factory=SynSegConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    batch_size: int = 256  # global: split evenly over the processes
    iterations: int = 10_000
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: int = 500
    seed: int = 42
    max_phrases: int = 8  # K: categories per image
    # Phrases are embedded with one template: the 8-template ensemble costs 8 text-tower passes per phrase, more than
    # the image encoder on a training batch. Inference keeps the ensemble (`model.templates`).
    phrase_templates: tuple[str, ...] = ("a photo of a {}.",)
    workers: int = 4  # data loader processes per rank; the data order depends on it, so resume with the same number
    resize: str = "stretch"  # "stretch" to SxS (as inference does) or "crop" (short side, centre crop)
    shuffle_buffer: int = 1000  # tar shards: samples held to shuffle within a shard
    checkpoint_every: int = 500
    log_every: int = 10
