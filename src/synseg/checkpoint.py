"""Checkpoints users load: a folder with `model.safetensors` (trainable weights only) and `config.json`. Nothing is unpickled."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from synseg.config import from_dict, read_json, to_dict, write_json
from synseg.errors import UserError
from synseg.io import staged_dir
from synseg.models.synseg import SynSeg, SynSegConfig, build_synseg

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def checkpoint_dir(path: str | os.PathLike) -> Path:
    """Accept the folder or the weights file inside it."""
    path = Path(path)
    folder = path.parent if path.name == WEIGHTS else path
    if not folder.exists():
        raise UserError(f"checkpoint not found: {path}")
    if not (folder / WEIGHTS).is_file() or not (folder / CONFIG).is_file():
        raise UserError(f"{path} is not a synseg checkpoint (it needs {WEIGHTS} and {CONFIG})")
    return folder


def load_config(path: str | os.PathLike) -> SynSegConfig:
    folder = checkpoint_dir(path)
    return from_dict(SynSegConfig, read_json(folder / CONFIG), where=str(folder / CONFIG))


def write_checkpoint_files(model: SynSeg, folder: Path) -> None:
    """Write weights and config into an existing (temporary) folder."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.trainable_state_dict().items()}
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": "synseg-v1"})
    write_json(to_dict(model.config), folder / CONFIG)


def save_model(model: SynSeg, path: str | os.PathLike) -> Path:
    """Write a checkpoint folder atomically: built beside the target, then swapped into place."""
    with staged_dir(path) as staging:
        write_checkpoint_files(model, staging)
    return Path(path)


def load_weights(model: SynSeg, path: str | os.PathLike) -> None:
    """Load trainable weights, failing in one line when they do not fit the model the config builds."""
    folder = checkpoint_dir(path)
    try:
        weights = load_file(str(folder / WEIGHTS))
    except (SafetensorError, OSError) as error:
        raise UserError(f"{folder / WEIGHTS} is not a readable safetensors file ({error})") from None
    expected = model.trainable_state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise UserError(f"{folder}: weights do not match its config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for name, tensor in weights.items():
        if tensor.shape != expected[name].shape:
            raise UserError(
                f"{folder}: weight '{name}' has shape {list(tensor.shape)} but its config builds {list(expected[name].shape)}"
            )
    model.load_state_dict(weights, strict=False)


def load_model(path: str | os.PathLike, device: str | torch.device = "auto", pretrained: str | None = "config") -> SynSeg:
    """Rebuild a model from its checkpoint, on `device` ("auto": the GPU when there is one); `pretrained` overrides
    where the backbone's weights come from."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    config = load_config(path)
    if pretrained != "config":
        config.backbone.pretrained = pretrained
    model = build_synseg(config)
    load_weights(model, path)
    return model.to(device).eval()
