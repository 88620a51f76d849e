"""The frozen backbone's layer tokens per image, stored once (fp16 safetensors) and read on every later epoch."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from synseg.errors import UserError
from synseg.io import atomic_path
from synseg.models.backbone import ClipBackbone


class FeatureCache:
    """One file per image under DIR/xx/; DIR/meta.json names the backbone, so a cache is never read for another."""

    def __init__(self, root: str | Path, backbone: ClipBackbone, templates: tuple[str, ...]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        meta = {"backbone": backbone.config.name, "pretrained": backbone.config.pretrained,
                "layers": list(backbone.layers), "image_size": backbone.image_size}
        meta_path = self.root / "meta.json"
        if meta_path.exists():
            found = json.loads(meta_path.read_text())
            if found != meta:
                raise UserError(f"feature cache {self.root} holds features of {found}, not of {meta}; use another --cache")
        else:
            with atomic_path(meta_path) as tmp:
                tmp.write_text(json.dumps(meta))
        self.backbone = backbone
        self.hits = self.misses = 0
        self.templates = tuple(templates)
        self.text_path = self.root / f"text-{hashlib.sha1(repr(self.templates).encode()).hexdigest()[:12]}.safetensors"
        self.text = {k: v.float() for k, v in load_file(str(self.text_path)).items()} if self.text_path.exists() else {}
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
        digest = hashlib.sha1(key.encode()).hexdigest()
        return self.root / digest[:2] / f"{digest}.safetensors"

    def encode(self, pixels: torch.Tensor, keys: list[str]) -> list[torch.Tensor]:
        """Layer tokens for a batch: read where cached, else computed by the backbone and stored."""
        found = [self.path(k) for k in keys]
        have = [p.exists() for p in found]
        tokens: list[list[torch.Tensor] | None] = [None] * len(keys)
        todo = [i for i, h in enumerate(have) if not h]
        if todo:
            fresh = self.backbone.encode_image(pixels[todo])
            for row, i in enumerate(todo):
                layers = [layer[row].half().contiguous().cpu() for layer in fresh]
                found[i].parent.mkdir(exist_ok=True)
                with atomic_path(found[i]) as tmp:
                    save_file({f"layer{j}": t for j, t in enumerate(layers)}, str(tmp))
                tokens[i] = [t.float() for t in layers]
        for i, h in enumerate(have):
            if h:
                stored = load_file(str(found[i]))
                tokens[i] = [stored[f"layer{j}"].float() for j in range(len(stored))]
        self.hits += sum(have)
        self.misses += len(todo)
        device = self.backbone.device
        return [torch.stack([t[j] for t in tokens]).to(device) for j in range(len(tokens[0]))]
