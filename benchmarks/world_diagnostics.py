"""Why a world run scores what it scores: what the world CLIP's patch tokens know, and where a checkpoint's maps fire.

    python benchmarks/world_diagnostics.py probe
        linear probe from the world CLIP's layer tokens to each token's class: can a decoder tell colour and shape?
    python benchmarks/world_diagnostics.py shape [--clip FILE]
        the world CLIP's zero-shot reading of the largest thing on held-out scenes, by its size: colour, and shape
        among the scenes whose colour it got right (chance 1 in 6)
    python benchmarks/world_diagnostics.py maps CHECKPOINT WORLD_TEST_DIR [--images 8]
        how alike the class texts are, then per test image: mean activation inside / outside each present class,
        and which classes win the argmax
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from synseg.checkpoint import load_model
from synseg.models import BackboneConfig
from synseg.models.backbone import ClipBackbone
from synseg.synthetic.experiment import ARCHITECTURE, SHIPPED_CLIP
from synseg.synthetic import tiny_clip
from synseg.synthetic.world import CLASSES, STUFF, make_scene, scene_rng


def backbone_pixels(backbone: ClipBackbone, image: np.ndarray) -> torch.Tensor:
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255
    pixels = F.interpolate(pixels, size=(backbone.image_size,) * 2, mode="bilinear", antialias=True, align_corners=False)
    return backbone.normalize(pixels)


def token_dataset(backbone: ClipBackbone, scenes: int, seed: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenated layer tokens of every patch, and the class covering most of that patch."""
    grid = backbone.image_size // backbone.patch_size
    features, labels = [], []
    for index in range(scenes):
        scene = make_scene(scene_rng(seed, index), 96, split)
        with torch.no_grad():
            layers = backbone.encode_image(backbone_pixels(backbone, scene.image))
        features.append(torch.cat([tokens[0, 1:] for tokens in layers], -1))
        one_hot = F.one_hot(torch.from_numpy(scene.label_map), len(CLASSES)).permute(2, 0, 1)[None].float()
        labels.append(F.adaptive_avg_pool2d(one_hot, grid)[0].flatten(1).argmax(0))
    return torch.cat(features), torch.cat(labels)


def probe(steps: int = 1500) -> None:
    torch.manual_seed(0)
    backbone = ClipBackbone(BackboneConfig(ARCHITECTURE, str(SHIPPED_CLIP)))
    x_train, y_train = token_dataset(backbone, 1500, 1, "train")
    x_test, y_test = token_dataset(backbone, 300, 2, "test")
    mean, std = x_train.mean(0), x_train.std(0) + 1e-5
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    classifier = torch.nn.Linear(x_train.shape[1], len(CLASSES))
    optimizer = torch.optim.Adam(classifier.parameters(), 1e-3, weight_decay=1e-5)
    for _ in range(steps):
        batch = torch.randint(len(x_train), (1024,))
        loss = F.cross_entropy(classifier(x_train[batch]), y_train[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predicted = classifier(x_test).argmax(1)
    thing = y_test >= len(STUFF)
    colour = lambda label: (label - len(STUFF)) // 6  # noqa: E731 - THINGS is colour-major, 6 shapes per colour
    same_colour = (predicted[thing] >= len(STUFF)) & (colour(predicted[thing]) == colour(y_test[thing]))
    print(f"tokens: {thing.float().mean():.1%} on things; stuff class right {(predicted[~thing] == y_test[~thing]).float().mean():.1%}; "
          f"thing colour right {same_colour.float().mean():.1%}; thing class (colour and shape) right "
          f"{(predicted[thing] == y_test[thing]).float().mean():.1%}")


def shape(clip: Path) -> None:
    radius, phrase_right, colour_right = [], [], []
    for scene, thing, _ in tiny_clip.read_scenes(tiny_clip.create(clip).float()):
        radius.append(scene.largest.radius / 96)
        phrase_right.append(thing == scene.largest.phrase)
        colour_right.append(thing.split(" ")[0] == scene.largest.colour)
    radius, phrase_right, colour_right = map(np.array, (radius, phrase_right, colour_right))
    print("largest thing's radius (share of the scene) | scenes | phrase right | colour right | shape right given colour")
    for low, high in ((0.09, 0.13), (0.13, 0.17), (0.17, 0.21), (0.21, 0.25)):
        bucket = (radius >= low) & (radius < high)
        shape_given_colour = phrase_right[bucket].sum() / max(1, colour_right[bucket].sum())
        print(f"{low:.2f}-{high:.2f} | {bucket.sum()} | {phrase_right[bucket].mean():.1%} | "
              f"{colour_right[bucket].mean():.1%} | {shape_given_colour:.1%}")


def maps(checkpoint: str, test: Path, images: int) -> None:
    model = load_model(checkpoint, "cpu")
    backbone = model.backbone
    text = backbone.embed_labels(list(CLASSES), model.config.templates)
    cosine = text @ text.T
    for name, group in (("stuff", slice(0, len(STUFF))), ("things", slice(len(STUFF), None))):
        block = cosine[group, group]
        print(f"mean text cosine between different {name}: {(block.sum() - block.trace()) / (len(block) * (len(block) - 1)):.2f}")
    for path in sorted((test / "JPEGImages").glob("*.png"))[:images]:
        image = Image.open(path).convert("RGB")
        activations = model.activation_maps(backbone_pixels(backbone, np.asarray(image)), text)[0]
        label = np.asarray(Image.open(test / "SegmentationClass" / path.name).resize(activations.shape[-2:], Image.NEAREST))
        inside_outside = []
        for index in np.unique(label):
            region = torch.from_numpy(label == index)
            inside_outside.append(f"{CLASSES[index]} {activations[index][region].mean():.2f}/{activations[index][~region].mean():.2f}")
        winners, counts = activations.argmax(0).unique(return_counts=True)
        top = sorted(zip(counts.tolist(), winners.tolist()), reverse=True)[:3]
        print(f"{path.name}: in/out {'; '.join(inside_outside)} | argmax {', '.join(f'{CLASSES[w]} {c}' for c, w in top)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("probe")
    commands.add_parser("shape").add_argument("--clip", type=Path, default=SHIPPED_CLIP)
    inspect = commands.add_parser("maps")
    inspect.add_argument("checkpoint")
    inspect.add_argument("test", type=Path)
    inspect.add_argument("--images", type=int, default=8)
    args = parser.parse_args()
    if args.command == "probe":
        probe()
    elif args.command == "shape":
        shape(args.clip)
    else:
        maps(args.checkpoint, args.test, args.images)


if __name__ == "__main__":
    main()
