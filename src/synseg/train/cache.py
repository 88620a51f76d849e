"""The frozen backbone's layer tokens per image, stored once (fp16 safetensors) and read on every later epoch."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from synseg.config import read_json
from synseg.errors import UserError
from synseg.io import atomic_path
from synseg.models.backbone import ClipBackbone


def readable(path: Path) -> dict[str, torch.Tensor]:
    """A cache file's tensors; none for a file that is absent or damaged (by a full disk, a copy cut short): what a
    cache lacks is computed again and the file rewritten."""
    try:
        return load_file(str(path))
    except (OSError, SafetensorError):
        return {}


READOUT = "readout"


class FeatureCache:
    """One file per image under DIR/xx/ holding the tokens of every block asked of it so far (a run that needs more
    blocks than the cache holds adds them) and, when `readout` is given, the per-token CLS readout that it computes from
    those tokens as read back (fp32: a warm epoch reads what a cold one computed, to the bit); DIR/meta.json names the
    backbone, so a cache is never read for another."""

    def __init__(self, root: str | Path, backbone: ClipBackbone, templates: tuple[str, ...], layers: tuple[int, ...],
                 readout: Callable[[list[torch.Tensor]], torch.Tensor] | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        meta = {"backbone": backbone.config.name, "pretrained": backbone.config.pretrained,
                "image_size": backbone.image_size}
        meta_path = self.root / "meta.json"
        if meta_path.exists():
            found = read_json(meta_path, "feature cache's meta.json")
            if found != meta:
                raise UserError(f"feature cache {self.root} holds features of {found}, not of {meta}; use another --cache")
        else:
            with atomic_path(meta_path) as tmp:
                tmp.write_text(json.dumps(meta))
        self.backbone = backbone
        self.layers = tuple(layers)
        self.readout = readout
        self.hits = self.misses = 0
        self.templates = tuple(templates)
        self.text_path = self.root / f"text-{hashlib.sha1(repr(self.templates).encode()).hexdigest()[:12]}.safetensors"
        self.text = {k: v.float() for k, v in readable(self.text_path).items()}
        self.text_dirty = False

    def embed_phrases(self, phrases: list[str]) -> torch.Tensor:
        """Phrase embeddings [N, E], computed once ever and kept in DIR/text-<templates>.safetensors."""
        missing = [p for p in dict.fromkeys(phrases) if p not in self.text]
        if missing:
            for phrase, embedding in zip(missing, self.backbone.embed_texts(missing, self.templates).cpu()):
                self.text[phrase] = embedding.half().float()
            self.text_dirty = True
        return torch.stack([self.text[p] for p in phrases]).to(self.backbone.device)

    def save_text(self) -> None:
        if self.text_dirty:
            with atomic_path(self.text_path) as tmp:
                save_file({k: v.half() for k, v in self.text.items()}, str(tmp))
            self.text_dirty = False

    def path(self, key: str) -> Path:
        digest = hashlib.sha1(key.encode("utf-8", "surrogatepass")).hexdigest()
        return self.root / digest[:2] / f"{digest}.safetensors"

    def encode(self, pixels: torch.Tensor, keys: list[str]) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Tokens of `layers` for a batch, and its readout [B, HW, E] when the cache keeps one (else None): read where
        cached, else computed and stored."""
        names = [f"block{layer}" for layer in self.layers]
        wanted = names + ([READOUT] if self.readout is not None else [])
        found = [self.path(k) for k in keys]
        stored = [readable(path) for path in found]
        todo = [i for i, held in enumerate(stored) if not all(name in held for name in wanted)]
        device = self.backbone.device
        if todo:
            fresh = [i for i in todo if not all(name in stored[i] for name in names)]
            if fresh:
                computed = self.backbone.encode_image(pixels[fresh], self.layers)
                for row, i in enumerate(fresh):
                    stored[i].update({name: layer[row].half().contiguous().cpu()
                                      for name, layer in zip(names, computed)})
            if self.readout is not None:
                tokens = [torch.stack([stored[i][name] for i in todo]).float().to(device) for name in names]
                for i, embeddings in zip(todo, self.readout(tokens)):
                    stored[i][READOUT] = embeddings.float().contiguous().cpu()
            for i in todo:
                found[i].parent.mkdir(exist_ok=True)
                with atomic_path(found[i]) as tmp:
                    save_file(stored[i], str(tmp))
        self.hits += len(keys) - len(todo)
        self.misses += len(todo)
        tokens = [torch.stack([held[name] for held in stored]).float().to(device) for name in names]
        readout = torch.stack([held[READOUT] for held in stored]).to(device) if self.readout is not None else None
        return tokens, readout
