"""Make the world CLIP small enough to ship inside the package.

    python -m synseg.synthetic.ship TRAINED.safetensors src/synseg/assets/world-clip.safetensors

Of open_clip's 49,408 token embeddings the world's text uses under a hundred; the others were never trained (weight
decay only shrank their random start), so they are zeroed, and everything is stored in fp16: git then keeps a few MB.
"""
from __future__ import annotations

import sys

import torch
from safetensors.torch import load_file, save_file

from synseg.models.synseg import DEFAULT_TEMPLATES
from synseg.synthetic.tiny_clip import tokenizer
from synseg.synthetic.world import CLASSES, make_scene, scene_rng


def world_token_ids(scenes: int = 20_000) -> torch.Tensor:
    texts = [make_scene(scene_rng(0, i, stream=7), 48, "test").caption for i in range(scenes)]
    texts += [template.format(name) for name in CLASSES for template in (*DEFAULT_TEMPLATES, "{}")]
    return torch.unique(tokenizer()(texts))


def main(argv: list[str]) -> int:
    source, target = argv
    weights = load_file(source)
    keep = torch.zeros(weights["token_embedding.weight"].shape[0], dtype=torch.bool)
    keep[world_token_ids()] = True
    weights["token_embedding.weight"][~keep] = 0
    save_file({k: v.half().contiguous() for k, v in weights.items()}, target, metadata={"kept_tokens": str(int(keep.sum()))})
    print(f"kept {int(keep.sum())} token embeddings; wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
