"""Checkpoints users load: a folder with `model.safetensors` (trainable weights only) and `config.json`. Nothing is unpickled."""
from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from synseg.card import CARD
from synseg.config import from_dict, read_json, to_dict, write_json
from synseg.errors import UserError
from synseg.io import staged_dir
from synseg.models.synseg import SynSeg, SynSegConfig, build_synseg

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


# A Hugging Face hub model id, optionally pinned: org/name or org/name@revision (branch, tag or commit).
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


@functools.cache
def from_hub(hub_id: str) -> Path:
    """The checkpoint files of a hub model, through huggingface_hub's cache (HF_HUB_OFFLINE=1: the cache alone)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    repo_id, _, revision = hub_id.partition("@")
    local = f"pass a local checkpoint folder instead (--checkpoint PATH, holding {CONFIG} and {WEIGHTS})"
    try:
        return Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=[CONFIG, WEIGHTS, CARD]))
    except LocalEntryNotFoundError:
        raise UserError(f"{hub_id} is neither a local folder nor in the Hugging Face cache, and the hub cannot be reached "
                        f"(no network, or HF_HUB_OFFLINE set): download it where there is network "
                        f"(hf download {repo_id}) or {local}") from None
    except RevisionNotFoundError:
        raise UserError(f"{repo_id} has no revision '{revision}' on the Hugging Face hub") from None
    except RepositoryNotFoundError:
        raise UserError(f"checkpoint not found: {hub_id} is neither a local folder nor a model on the Hugging Face hub "
                        "(a private one needs `hf auth login`)") from None
    except HfHubHTTPError as error:
        raise UserError(f"the Hugging Face hub refused {hub_id} ({error.__class__.__name__}); {local}") from None


def checkpoint_dir(path: str | os.PathLike) -> Path:
    """Accept the folder, the weights file inside it, or a hub id `org/name[@revision]` (when no such path exists)."""
    if not Path(path).exists() and HUB_ID.match(str(path)):
        path = from_hub(str(path))
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


def save_model(model: SynSeg, path: str | os.PathLike, card: str | None = None) -> Path:
    """Write a checkpoint folder atomically: built beside the target, then swapped into place; with its model card."""
    with staged_dir(path) as staging:
        write_checkpoint_files(model, staging)
        if card is not None:
            (staging / CARD).write_text(card, encoding="utf-8")
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
