"""Put the world's models inside the package.

    python -m synseg.research.world.ship clip TRAINED.safetensors src/synseg/assets/world-clip.safetensors
    python -m synseg.research.world.ship demo RUN/final src/synseg/assets/world-demo

The CLIP: of open_clip's 49,408 token embeddings the world's text uses under a hundred; the others were never trained
(weight decay only shrank their random start), so they are zeroed, and everything is stored in fp16; its metadata names
the held-out set it was trained without (`tiny_clip.trained_without`).
The demo checkpoint (`synseg demo`): a world checkpoint whose backbone names the shipped CLIP by file name, since the
absolute path it was trained with exists only on the machine that trained it.
"""
from __future__ import annotations

import json
import sys

import torch
from safetensors.torch import load_file, save_file

from synseg.models.synseg import DEFAULT_TEMPLATES
from synseg.research.world.tiny_clip import architecture_of, tokenizer, trained_without
from synseg.synthetic.world import CLASSES, make_scene, scene_rng


def world_token_ids(scenes: int = 20_000) -> torch.Tensor:
    texts = [make_scene(scene_rng(0, i, stream=7), 48, "test").caption for i in range(scenes)]
    texts += [template.format(name) for name in CLASSES for template in (*DEFAULT_TEMPLATES, "{}")]
    return torch.unique(tokenizer()(texts))


def ship_clip(source: str, target: str) -> None:
    weights = load_file(source)
    keep = torch.zeros(weights["token_embedding.weight"].shape[0], dtype=torch.bool)
    keep[world_token_ids()] = True
    weights["token_embedding.weight"][~keep] = 0
    metadata = {"architecture": architecture_of(source), "kept_tokens": str(int(keep.sum())),
                "unseen": json.dumps(trained_without(source))}
    save_file({k: v.half().contiguous() for k, v in weights.items()}, target, metadata=metadata)
    print(f"kept {int(keep.sum())} token embeddings; wrote {target}")


def ship_demo(checkpoint: str, target: str) -> None:
    from synseg.checkpoint import load_model, save_model
    from synseg.synthetic import SHIPPED_CLIP

    model = load_model(checkpoint, pretrained=str(SHIPPED_CLIP))
    model.config.backbone.pretrained = SHIPPED_CLIP.name
    print(f"wrote {save_model(model, target)}")


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("clip", "demo"):
        print("usage:\n" + "\n".join(__doc__.strip().splitlines()[2:4]), file=sys.stderr)
        return 2
    kind, source, target = argv
    (ship_clip if kind == "clip" else ship_demo)(source, target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
