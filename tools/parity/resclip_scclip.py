"""Parity of synseg's `resclip` and `scclip` with their reference code, as tools/parity/training_free.py does for
the older methods: one random open_clip ViT (ViT-B/16's patch size, head width and input size; all biases and norms
randomised), the same inputs and 7 random label embeddings through both, max abs difference of the dense logits. Each
depth runs its own ViT: 12 blocks (the released block indices as they are) and 24 (ViT-L/14's depth, where the code
keeps them); SC-CLIP also on 6 blocks, its indices set to `released_index`'s (its code takes them as settings). The
references are run from their own clones, never copied here:

    git clone https://github.com/yvhangyang/ResCLIP refs/ResCLIP   # 0e085f7
    git clone https://github.com/SuleBai/SC-CLIP refs/SC-CLIP       # 0417ba9
    python tools/parity/resclip_scclip.py --refs refs --out runs/parity-2025

What runs of each: the VisionTransformer of its clip/model.py, loaded as a file (its clip/__init__ needs
pkg_resources), one image at a time (both assume a batch of one); ResCLIP's with `set_params('wo_resi', 'resclip', 5)`
and its COCO-Object config's temp_thd and weights (synseg's default preset), given the label embeddings as its
query_features. ResCLIP's model.py imports cv2 for a function it never calls (a stand-in module is given) and moves
tensors and its PAMR to CUDA (here `.cuda()` and `.to('cuda')` leave them where they are). SC-CLIP runs on square
inputs only: its outlier positions divide by the row count, which fails on other grids.
"""
from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from training_free import PATCH, load_file_module, logits_from_tokens  # noqa: E402

TEXT = {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 1}
SIZES = {"224x224": (224, 224), "448x448": (448, 448), "320x448": (448, 320)}  # (H, W)
DEPTHS = {"resclip": (12, 24), "scclip": (6, 12, 24)}


def architecture(depth: int) -> dict:
    return {"embed_dim": 128, "quick_gelu": True, "text_cfg": TEXT,
            "vision_cfg": {"image_size": 224, "layers": depth, "width": 192, "head_width": 64, "patch_size": PATCH}}


def random_backbone(depth: int):
    from synseg.models.backbone import BackboneConfig, ClipBackbone

    torch.manual_seed(depth)
    backbone = ClipBackbone(BackboneConfig(name=f"parity-vit-{depth}", pretrained=None,
                                           architecture=architecture(depth))).eval()
    with torch.no_grad():  # open_clip leaves biases at zero and norms at one: randomise them so no term can hide
        for name, p in backbone.clip.visual.named_parameters():
            if "ln_" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif p.dim() == 1 or name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    return backbone


def reference_vit(module, visual, depth: int):
    vision = architecture(depth)["vision_cfg"]
    vit = module.VisionTransformer(input_resolution=vision["image_size"], patch_size=PATCH, width=vision["width"],
                                   layers=depth, heads=vision["width"] // vision["head_width"],
                                   output_dim=architecture(depth)["embed_dim"])
    vit.load_state_dict(visual.state_dict())
    return vit.eval()


class StayOnCpu:
    """While active, `.cuda()` and `.to('cuda')` leave tensors and modules where they are."""

    def __enter__(self):
        self.saved = torch.Tensor.cuda, torch.nn.Module.to
        module_to = torch.nn.Module.to
        torch.Tensor.cuda = lambda tensor, *args, **kwargs: tensor
        to_cuda = lambda args: args and isinstance(args[0], torch.device) and args[0].type == "cuda"  # noqa: E731
        torch.nn.Module.to = lambda module, *args, **kwargs: (module if to_cuda(args)
                                                               else module_to(module, *args, **kwargs))

    def __exit__(self, *exc):
        torch.Tensor.cuda, torch.nn.Module.to = self.saved


def resclip_reference(refs: Path):
    sys.modules.setdefault("cv2", types.ModuleType("cv2"))
    sys.path.insert(0, str(refs / "ResCLIP"))  # its model.py imports its pamr.py
    module = load_file_module("resclip_model", refs / "ResCLIP/clip/model.py")
    sys.path.remove(str(refs / "ResCLIP"))

    def run(visual, depth: int, pixels: torch.Tensor, text: torch.Tensor, preset) -> torch.Tensor:
        vit = reference_vit(module, visual, depth)
        vit.set_params("wo_resi", "resclip", 5.0)
        with StayOnCpu():
            return torch.cat([vit(image[None], return_all=True, use_rcs=True, use_sfr=True,
                                  temp_thd=preset.feedback_threshold, attn_sfr_weights=list(preset.sfr),
                                  attn_rcs_weights=list(preset.rcs), delete_same_entity=True, query_features=text,
                                  img=image[None], patch_size=PATCH, logit_scale=preset.logit_scale,
                                  dtype=torch.float32, align_corners=False)[:, 1:] for image in pixels])
    return run


def scclip_reference(refs: Path):
    module = load_file_module("scclip_model", refs / "SC-CLIP/clip/model.py")

    def run(visual, depth: int, pixels: torch.Tensor, text: torch.Tensor, preset) -> torch.Tensor:
        from synseg.methods.base import released_index
        from synseg.methods.scclip import ADJUST_BLOCK, FUSE_BLOCK, FUSED_BLOCKS

        vit = reference_vit(module, visual, depth)
        vit.pre_adjust_idx, vit.post_adjust_idx = released_index(ADJUST_BLOCK, depth), released_index(FUSE_BLOCK, depth)
        fused = sorted({released_index(i, depth) for i in FUSED_BLOCKS})
        assert fused == list(range(fused[0], fused[-1] + 1))  # a contiguous range, as the code's start and end
        vit.multi_start_idx, vit.multi_end_idx = fused[0], fused[-1] + 1
        return torch.cat([vit(image[None], return_all=True) for image in pixels])
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refs", type=Path, required=True, help="folder holding the ResCLIP and SC-CLIP clones")
    parser.add_argument("--out", type=Path, required=True, help="where parity.json goes")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    from synseg.encoding import EncodedViews
    from synseg.methods import build_predictor

    references = {"resclip": resclip_reference(args.refs.resolve()), "scclip": scclip_reference(args.refs.resolve())}
    results = {}
    for method, reference in references.items():
        for depth in DEPTHS[method]:
            backbone = random_backbone(depth)
            ours = build_predictor(method, backbone=backbone)
            torch.manual_seed(1)
            text = F.normalize(torch.randn(7, backbone.embed_dim), dim=-1)
            for key, size in SIZES.items():
                if method == "scclip" and size[0] != size[1]:
                    continue
                pixels = torch.randn(2, 3, *size)
                with torch.no_grad():
                    theirs = logits_from_tokens(reference(backbone.clip.visual, depth, pixels, text, ours.preset),
                                                text, size)
                with torch.inference_mode():
                    results[f"{method} {depth} blocks {key}"] = float((ours.logits(EncodedViews(pixels, backbone), text) - theirs).abs().max())
                print(f"{method} {depth:>2} blocks {key:<8} max |ours - reference| = "
                      f"{results[f'{method} {depth} blocks {key}']:.1e}", flush=True)
    (args.out / "parity.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
