"""Parity of synseg's `proxyclip` with ProxyCLIP's code and DINO's: the random open_clip ViT of
tools/parity/training_free.py, a random DINO ViT-B/8 (timm's architecture, all biases and norms randomised; its
weights loaded into DINO's own VisionTransformer), the same CLIP-normalised inputs and 7 random label embeddings through
both, max abs difference of the dense logits. The references are run from their own clones, never copied here:

    git clone https://github.com/mc-lan/ProxyCLIP refs/ProxyCLIP              # e7b767f
    git clone https://github.com/facebookresearch/dino refs/dino               # 7c446df
    python tools/parity/proxyclip.py --refs refs --out runs/parity-proxyclip

What runs: DINO's `vision_transformer.vit_base(patch_size=8)` and its `get_intermediate_layers` (ProxyCLIP's `dino`
branch, on the window taken back to ImageNet's normalisation as its forward_feature does), then ProxyCLIP's vendored
open_clip `VisionTransformer.forward(x, ex_feats, beta=1.2, gamma=3.0)` in a child process (it would shadow the
installed open_clip), one image at a time as ProxyCLIP's windows go (the mean similarity spans the batch). ProxyCLIP
runs both models in float16 on a GPU; both sides run in float32 here.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from training_free import build_inputs, load_file_module, vendored_visual  # noqa: E402

SIZES = {"224x224": (224, 224), "336x336": (336, 336)}
DINO_PATCH = 8


def randomised(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif p.dim() == 1 or name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))


def proxyclip_child(refs: Path, out: Path) -> None:
    """In a fresh process: ProxyCLIP's vendored open_clip, its VisionTransformer fed DINO's features."""
    visual, data = vendored_visual(refs / "ProxyCLIP", out)
    dino = load_file(str(out / "dino.safetensors"))
    with torch.no_grad():
        tokens = {key: torch.cat([visual(image[None], ex_feats=feats[None], beta=1.2, gamma=3.0)  # one at a time
                                  for image, feats in zip(data[f"input.{key}"], dino[key])]) for key in dino}
    save_file(tokens, str(out / "proxyclip.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refs", type=Path, required=True, help="folder holding the ProxyCLIP and dino clones")
    parser.add_argument("--out", type=Path, required=True, help="work folder (inputs, DINO's features, parity.json)")
    parser.add_argument("--proxyclip-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    refs = args.refs.resolve()
    if args.proxyclip_child:
        return proxyclip_child(refs, args.out)

    from synseg.encoding import EncodedViews
    from synseg.methods import build_predictor

    backbone, _, text = build_inputs(args.out)
    ours = build_predictor("proxyclip", backbone=backbone)
    randomised(ours.foundation)
    sys.path.insert(0, str(refs / "dino"))  # its vision_transformer imports its utils
    dino = load_file_module("dino_vit", refs / "dino/vision_transformer.py").vit_base(patch_size=DINO_PATCH)
    dino.load_state_dict(ours.foundation.state_dict())
    dino.eval()
    clip_mean, clip_std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]  # its UnNormalize
    imagenet_mean, imagenet_std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    torch.manual_seed(5)
    inputs = {key: torch.randn(2, 3, *size) for key, size in SIZES.items()}
    features = {}
    with torch.no_grad():
        for key, pixels in inputs.items():
            images = pixels.clone()
            for image in images:
                for channel, mean, std in zip(image, clip_mean, clip_std):
                    channel.mul_(std).add_(mean)
            images = (images - imagenet_mean.view(1, 3, 1, 1)) / imagenet_std.view(1, 3, 1, 1)
            grid = (pixels.shape[-2] // DINO_PATCH, pixels.shape[-1] // DINO_PATCH)
            tokens = dino.get_intermediate_layers(images)[0][:, 1:]
            features[key] = tokens.reshape(len(tokens), *grid, -1).permute(0, 3, 1, 2).contiguous()
    data = load_file(str(args.out / "inputs.safetensors"))
    kept = {k: v for k, v in data.items() if not k.startswith("input.")}
    save_file(kept | {f"input.{k}": v for k, v in inputs.items()}, str(args.out / "inputs.safetensors"))
    save_file(features, str(args.out / "dino.safetensors"))
    subprocess.run([sys.executable, __file__, "--refs", str(refs), "--out", str(args.out), "--proxyclip-child"],
                   check=True)
    theirs_tokens = load_file(str(args.out / "proxyclip.safetensors"))
    results = {}
    for key, pixels in inputs.items():
        size = tuple(pixels.shape[-2:])
        grid = (size[0] // DINO_PATCH, size[1] // DINO_PATCH)
        logits = F.normalize(theirs_tokens[key], dim=-1) @ text.T
        theirs = F.interpolate(logits.permute(0, 2, 1).reshape(len(pixels), -1, *grid), size=size, mode="bilinear")
        with torch.inference_mode():
            results[f"proxyclip {key}"] = float((ours.logits(EncodedViews(pixels, backbone), text) - theirs).abs().max())
        print(f"proxyclip {key:<8} max |ours - reference| = {results[f'proxyclip {key}']:.1e}", flush=True)
    (args.out / "parity.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
