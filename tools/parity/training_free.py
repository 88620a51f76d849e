"""Parity of synseg's training-free methods with each method's reference code: the same random open_clip ViT and the
same inputs through both, max abs difference of the dense logits (cosine of patch features and label embeddings,
upsampled to the input as the references do). The references are run from their own clones, never copied here:

    git clone https://github.com/chongzhou96/MaskCLIP refs/MaskCLIP   # 245d31f
    git clone https://github.com/wangf3014/SCLIP refs/SCLIP           # b56bd30
    git clone https://github.com/mc-lan/ClearCLIP refs/ClearCLIP      # ad68a40
    git clone https://github.com/sinahmr/NACLIP refs/NACLIP           # 0cac3a6
    python tools/parity/training_free.py --refs refs --out runs/parity

What runs of each: SCLIP's and NACLIP's VisionTransformer (their clip/model.py, loaded as a file: their clip/__init__
needs pkg_resources); ClearCLIP's VisionTransformer.forward from its vendored open_clip, in a child process (it would
shadow the installed open_clip); MaskCLIP's TransformerEncoderLayer.forward (mmseg/models/backbones/vit.py) compiled
alone, since its module imports mmcv, with open_clip's attention and MLP standing in for mmcv's wrappers.
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

# ViT-B/16's patch size, head width and input size, 6 blocks of width 192 (CPU-quick); quick GELU as OpenAI's CLIP.
ARCHITECTURE = {
    "embed_dim": 128, "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 6, "width": 192, "head_width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 1},
}
SIZES = {"224x224": (224, 224), "320x448": (448, 320)}  # (H, W); the second resizes the position embeddings
PATCH = 16


def build_inputs(out: Path):
    from synseg.models.backbone import BackboneConfig, ClipBackbone

    torch.manual_seed(0)
    backbone = ClipBackbone(BackboneConfig(name="parity-vit", pretrained=None, architecture=ARCHITECTURE)).eval()
    visual = backbone.clip.visual
    with torch.no_grad():  # open_clip leaves biases at zero and norms at one: randomise them so no term can hide
        for name, p in visual.named_parameters():
            if "ln_" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif p.dim() == 1 or name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    inputs = {key: torch.randn(2, 3, *size) for key, size in SIZES.items()}
    text = F.normalize(torch.randn(7, backbone.embed_dim), dim=-1)
    save_file({**{f"visual.{k}": v.contiguous() for k, v in visual.state_dict().items()},
               **{f"input.{k}": v for k, v in inputs.items()}, "text": text}, str(out / "inputs.safetensors"))
    return backbone, inputs, text


def logits_from_tokens(tokens: torch.Tensor, text: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The references' forward_feature: normalise patch tokens, dot with text, grid, bilinear to the input."""
    logits = F.normalize(tokens, dim=-1) @ text.T
    grid = (size[0] // PATCH, size[1] // PATCH)
    return F.interpolate(logits.permute(0, 2, 1).reshape(len(tokens), -1, *grid), size=size, mode="bilinear")


def load_file_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def openai_vit(path: Path, visual):
    vision = ARCHITECTURE["vision_cfg"]
    vit = load_file_module(path.parent.parent.name + "_model", path).VisionTransformer(
        input_resolution=vision["image_size"], patch_size=PATCH, width=vision["width"], layers=vision["layers"],
        heads=vision["width"] // vision["head_width"], output_dim=ARCHITECTURE["embed_dim"])
    vit.load_state_dict(visual.state_dict())
    return vit.eval()


class MmcvAttention:
    """mmcv's MultiheadAttention interface (identity + attention, the torch module as .attn), batch first."""

    def __init__(self, mha) -> None:
        self.attn = mha

    def __call__(self, y, identity):
        return identity + self.attn(y, y, y, need_weights=False)[0]


def maskclip_tokens(refs: Path, visual, pixels):
    tree = ast.parse((refs / "MaskCLIP/mmseg/models/backbones/vit.py").read_text())
    layer = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "TransformerEncoderLayer")
    forward = next(n for n in layer.body if isinstance(n, ast.FunctionDef) and n.name == "forward")
    namespace = {"F": F, "torch": torch}
    exec(compile(ast.Module(body=[forward], type_ignores=[]), "MaskCLIP vit.py", "exec"), namespace)
    assert visual.transformer.batch_first
    blocks = visual.transformer.resblocks
    last = blocks[-1]
    stand_in = types.SimpleNamespace(norm1=last.ln_1, norm2=last.ln_2, attn=MmcvAttention(last.attn),
                                     ffn=lambda y, identity: identity + last.mlp(y))
    x = visual._embeds(pixels)
    for block in blocks[:-1]:
        x = block(x)
    _, _, _, v = namespace["forward"](stand_in, x, return_qkv=True)  # return_qkv on the last layer, as MaskCLIP's config
    return (visual.ln_post(v) @ visual.proj)[:, 1:]  # final_norm on v, then the head's 1x1 projection


def vendored_visual(repo: Path, out: Path):
    """The parity ViT built by a repository's vendored open_clip (to be called in a fresh process, which it shadows
    the installed open_clip in), with the weights of out/inputs.safetensors; and those inputs."""
    sys.path.insert(0, str(repo))
    import open_clip  # the repository's copy

    (out / "parity-vit.json").write_text(json.dumps(ARCHITECTURE))
    open_clip.add_model_config(out / "parity-vit.json")
    visual = open_clip.create_model("parity-vit", pretrained=None).visual.eval()
    data = load_file(str(out / "inputs.safetensors"))
    visual.load_state_dict({k[len("visual."):]: v for k, v in data.items() if k.startswith("visual.")})
    return visual, data


def clearclip_child(refs: Path, out: Path) -> None:
    """In a fresh process: ClearCLIP's vendored open_clip, model_type 'ClearCLIP', ignore_residual=True."""
    visual, data = vendored_visual(refs / "ClearCLIP", out)
    with torch.no_grad():
        tokens = {key[len("input."):]: visual(data[key], model_type="ClearCLIP", ignore_residual=True).contiguous()
                  for key in data if key.startswith("input.")}
    save_file(tokens, str(out / "clearclip.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refs", type=Path, required=True, help="folder holding the MaskCLIP, SCLIP, ClearCLIP, NACLIP clones")
    parser.add_argument("--out", type=Path, required=True, help="work folder (inputs, ClearCLIP's tokens, parity.json)")
    parser.add_argument("--clearclip-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.clearclip_child:
        return clearclip_child(args.refs.resolve(), args.out)

    from synseg.encoding import EncodedViews
    from synseg.methods import build_predictor

    backbone, inputs, text = build_inputs(args.out)
    visual = backbone.clip.visual
    subprocess.run([sys.executable, __file__, "--refs", str(args.refs), "--out", str(args.out), "--clearclip-child"],
                   check=True)
    clearclip = load_file(str(args.out / "clearclip.safetensors"))
    sclip = openai_vit(args.refs / "SCLIP/clip/model.py", visual)
    naclip = openai_vit(args.refs / "NACLIP/clip/model.py", visual)
    naclip.set_params("reduced", "naclip", 5.0)
    references = {
        "maskclip": lambda key, x: maskclip_tokens(args.refs, visual, x) if key == "224x224" else None,
        "sclip": lambda key, x: sclip(x, return_all=True, csa=True)[:, 1:],
        "clearclip": lambda key, x: clearclip[key],  # its forward already drops CLS
        "naclip": lambda key, x: naclip(x, return_all=True)[:, 1:],
    }
    results = {}
    with torch.no_grad():
        for method, reference in references.items():
            ours = build_predictor(method, backbone=backbone)
            for key, pixels in inputs.items():
                tokens = reference(key, pixels)
                if tokens is None:
                    continue  # MaskCLIP's mmseg position-embedding resize is not run here: 224x224 only
                theirs = logits_from_tokens(tokens, text, tuple(pixels.shape[-2:]))
                with torch.inference_mode():
                    results[f"{method} {key}"] = float((ours.logits(EncodedViews(pixels, backbone), text) - theirs).abs().max())
    (args.out / "parity.json").write_text(json.dumps(results, indent=1) + "\n")
    for row, diff in results.items():
        print(f"{row:<22} max |ours - reference| = {diff:.1e}")


if __name__ == "__main__":
    main()
