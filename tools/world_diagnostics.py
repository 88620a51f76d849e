"""Why a world run scores what it scores: what the world CLIP knows, and where a checkpoint's maps fire.

    python tools/world_diagnostics.py clip [--clip FILE]
        the world CLIP's zero-shot reading of the largest thing (held-out scenes, as the CLIP was trained: 1-3 things,
        and as the experiment's world is: 1-5 things with backdrops; unseen things are the held-out set the file
        records), and a linear probe from its last block's patch tokens to each token's class: can a decoder tell a
        thing's colour and pattern per patch?
    python tools/world_diagnostics.py maps CHECKPOINT WORLD_TEST_DIR [--images 8]
        how alike the class texts are, then per test image: mean activation inside / outside each present class,
        and which classes win the argmax
    python tools/world_diagnostics.py regions [--clip FILE] [--scenes 300]
        what FSS can read of a region: each thing's ground-truth token mask turned into one CLIP-space vector in the
        ways FSS could pool it, and how often that vector's nearest thing phrase is the right one
    python tools/world_diagnostics.py readout WORLD_TEST_DIR [--clip FILE]
        where the per-token CLS readout goes wrong: its mIoU, its mIoU when each scene's argmax is restricted to the
        classes the scene holds, how many instances of each unseen thing the scenes hold, and where its wrongly
        labelled thing pixels go (an absent thing of the same colour, of the same pattern, stuff, ...); seen and
        unseen things are the folder's held-out set (its world.json), and the CLIP must have been trained without it
    python tools/world_diagnostics.py phrases PHRASES_JSONL [--clip FILE]
        how alike the mined training phrases' texts are (one training template): mean and std of the cosines between
        distinct phrases, and the absent-phrase gate `text_gate` reads from them at the default quantile
    python tools/world_diagnostics.py sizes WORLD_TEST_DIR [CHECKPOINT ...]
        how many patch tokens each thing covers where it is visible (what `loss.present_share` is set against), and
        per checkpoint how much of each present thing its map covers and how much of that map lies outside the thing
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from synseg.checkpoint import load_model
from synseg.encoding import EncodedViews
from synseg.train.losses import LossConfig, text_gate
from synseg.train.config import TrainConfig
from synseg.models.backbone import ClipBackbone
from synseg.models.fss import masked_attention_pooling
from synseg.methods.maskclip import MaskCLIP
from synseg.research.world import tiny_clip
from synseg.methods.readout import CLSReadout
from synseg.models.synseg import DEFAULT_TEMPLATES
from synseg.synthetic import SHIPPED_CLIP, SHIPPED_CLIPS
from synseg.research.world.experiment import WorldConfig, group_miou, scene_totals
from synseg.synthetic.world import CLASSES, MAX_THINGS, PATTERNS, STUFF, THINGS, make_scene, read_held_out, scene_rng


def backbone_pixels(backbone: ClipBackbone, image: np.ndarray) -> torch.Tensor:
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255
    pixels = F.interpolate(pixels, size=(backbone.image_size,) * 2, mode="bilinear", antialias=True, align_corners=False)
    return backbone.normalize(pixels)


def token_dataset(backbone: ClipBackbone, scenes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Last-block tokens of every patch of test-split scenes (all 36 things), the class covering most of the patch,
    and the share of the patch that class covers."""
    grid = backbone.image_size // backbone.patch_size
    features, labels, shares = [], [], []
    for index in range(scenes):
        scene = make_scene(scene_rng(seed, index), backbone.image_size, "test", backdrop=WorldConfig.backdrop)
        with torch.no_grad():
            layers = backbone.encode_image(backbone_pixels(backbone, scene.image))
        features.append(layers[-1][0, 1:])
        one_hot = F.one_hot(torch.from_numpy(scene.label_map), len(CLASSES)).permute(2, 0, 1)[None].float()
        share, label = F.adaptive_avg_pool2d(one_hot, grid)[0].flatten(1).max(0)
        labels.append(label)
        shares.append(share)
    return torch.cat(features), torch.cat(labels), torch.cat(shares)


def probe(backbone: ClipBackbone, scenes: int = 1500, steps: int = 2000) -> dict[str, float]:
    """A linear classifier over the 42 classes, trained on 70% of the scenes' tokens and scored on the rest."""
    torch.manual_seed(0)
    features, labels, shares = token_dataset(backbone, scenes, 2)
    cut = int(0.7 * scenes) * (backbone.image_size // backbone.patch_size) ** 2
    x_train, y_train, x_test, y_test, share = features[:cut], labels[:cut], features[cut:], labels[cut:], shares[cut:]
    mean, std = x_train.mean(0), x_train.std(0) + 1e-5
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    classifier = torch.nn.Linear(x_train.shape[1], len(CLASSES))
    optimizer = torch.optim.Adam(classifier.parameters(), 1e-2, weight_decay=1e-5)
    for _ in range(steps):
        batch = torch.randint(len(x_train), (1024,))
        loss = F.cross_entropy(classifier(x_train[batch]), y_train[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predicted = classifier(x_test).argmax(1)
    thing = y_test >= len(STUFF)
    inside = thing & (share >= 0.75)
    colour = lambda label: (label - len(STUFF)) // len(PATTERNS)  # noqa: E731 - THINGS is colour-major
    pattern = lambda label: (label - len(STUFF)) % len(PATTERNS)  # noqa: E731
    is_thing = predicted >= len(STUFF)
    rate = lambda hits, where: float(hits[where].float().mean())  # noqa: E731
    return {
        "tokens_inside_a_thing": int(inside.sum()), "tokens_on_things": int(thing.sum()),
        "inside_thing_right": rate(predicted == y_test, inside),
        "inside_colour_right": rate(is_thing & (colour(predicted) == colour(y_test)), inside),
        "inside_pattern_right": rate(is_thing & (pattern(predicted) == pattern(y_test)), inside),
        "all_thing_tokens_right": rate(predicted == y_test, thing),
        "stuff_tokens_right": rate(predicted == y_test, ~thing),
    }


def clip(path: Path) -> None:
    model = tiny_clip.create(path, tiny_clip.architecture_of(path)).float()
    unseen = tiny_clip.trained_without(path)
    print(f"{path.name}: trained without held-out set {unseen!r}")
    for name, max_things, backdrop in (("as trained (1-3 things)", tiny_clip.WorldClipConfig.max_things, 0.0),
                                       ("the experiment's world (1-5 things, backdrops)", MAX_THINGS, WorldConfig.backdrop)):
        accuracy = tiny_clip.zero_shot(model, max_things=max_things, backdrop=backdrop, unseen=unseen)
        print(f"zero-shot, {name}: largest thing seen {accuracy['things_seen']:.1%} (n={accuracy['n_things_seen']}), "
              f"unseen {accuracy['things_unseen']:.1%} (n={accuracy['n_things_unseen']}), stuff {accuracy['stuff']:.1%}; "
              f"chance {1 / len(THINGS):.1%} and {1 / len(STUFF):.1%}")
    result = probe(ClipBackbone(tiny_clip.backbone_config(path)))
    print(f"linear probe on the last block's patch tokens ({result['tokens_inside_a_thing']} test tokens at least 3/4 inside "
          f"one thing): thing (colour and pattern) right {result['inside_thing_right']:.1%}, colour "
          f"{result['inside_colour_right']:.1%}, pattern {result['inside_pattern_right']:.1%}; all "
          f"{result['tokens_on_things']} thing tokens, boundaries included: {result['all_thing_tokens_right']:.1%}; "
          f"stuff tokens {result['stuff_tokens_right']:.1%}; chance {1 / len(CLASSES):.1%}")


@torch.no_grad()
def regions(path: Path, scenes: int) -> None:
    """Soft masks are each token's share of the thing; scenes as the experiment's test split draws them."""
    backbone = ClipBackbone(tiny_clip.backbone_config(path))
    visual, blocks = backbone.clip.visual, backbone.clip.visual.transformer.resblocks
    things = [CLASSES.index(thing) for thing in THINGS]
    text = backbone.embed_labels([CLASSES[i] for i in things], ("a photo of a {}.",))
    head = lambda x: F.normalize(visual.ln_post(x) @ visual.proj, dim=-1)
    maskclip = MaskCLIP(backbone)
    right: dict[str, list[bool]] = {}
    for index in range(scenes):
        scene = make_scene(scene_rng(7, index), backbone.image_size, "test", backdrop=WorldConfig.backdrop)
        pixels = backbone_pixels(backbone, scene.image)
        inputs = backbone.encode_image(pixels, tuple(range(-1, len(blocks) - 1)))
        value_tokens = maskclip.last_block(blocks[-1], inputs[-1], backbone.grid)[0, 1:]
        label = torch.from_numpy(scene.label_map)
        shares = F.adaptive_avg_pool2d(F.one_hot(label, len(CLASSES)).permute(2, 0, 1)[None].float(), backbone.grid)[0]
        for c in label.unique().tolist():
            share = shares[c].flatten()
            if c not in things or share.sum() < 1:
                continue
            weights = share / share.sum()
            vectors = {
                "mean of MaskCLIP's dense tokens (value path of the last block)": head(weights @ value_tokens),
                "class token, last block's attention masked": head(masked_attention_pooling(
                    blocks[-1:], inputs[-1:], share[None], torch.zeros(1, dtype=torch.long))[0]),
                "class token, every block's attention masked (pool_source attention)": head(masked_attention_pooling(
                    blocks, inputs, share[None], torch.zeros(1, dtype=torch.long))[0]),
                "CLIP on the image with everything else at the mean colour": F.normalize(
                    backbone.clip.encode_image(pixels * (label == c).float())[0], dim=-1),
            }
            for name, vector in vectors.items():
                right.setdefault(name, []).append(things[int((vector @ text.T).argmax())] == c)
    for name, hits in right.items():
        print(f"{name}: {np.mean(hits):.1%} of {len(hits)} things named right (chance {1 / len(things):.1%})")


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
        activations = model.activation_maps(EncodedViews(backbone_pixels(backbone, np.asarray(image)), backbone), text)[0]
        label = np.asarray(Image.open(test / "SegmentationClass" / path.name).resize(activations.shape[-2:], Image.NEAREST))
        inside_outside = []
        for index in np.unique(label):
            region = torch.from_numpy(label == index)
            inside_outside.append(f"{CLASSES[index]} {activations[index][region].mean():.2f}/{activations[index][~region].mean():.2f}")
        winners, counts = activations.argmax(0).unique(return_counts=True)
        top = sorted(zip(counts.tolist(), winners.tolist()), reverse=True)[:3]
        print(f"{path.name}: in/out {'; '.join(inside_outside)} | argmax {', '.join(f'{CLASSES[w]} {c}' for c, w in top)}")


@torch.no_grad()
def sizes(test: Path, checkpoints: list[str]) -> None:
    """A thing's visible area in tokens is its pixels over patch x patch (the world's scenes are the CLIP's input size);
    a map covers a pixel where its activation passes the model's background threshold."""
    paths = sorted((test / "JPEGImages").glob("*.png"))
    labels = [np.asarray(Image.open(test / "SegmentationClass" / path.name)) for path in paths]
    patch = ClipBackbone(tiny_clip.backbone_config(SHIPPED_CLIP)).patch_size
    things = [CLASSES.index(name) for name in THINGS]
    areas = np.array([count / patch**2 for label in labels for index, count in zip(*np.unique(label, return_counts=True))
                      if index in things])
    print(f"{len(areas)} visible things in {len(paths)} scenes; tokens covered, percentiles 10/25/50/75/90: "
          f"{' / '.join(f'{v:.1f}' for v in np.percentile(areas, [10, 25, 50, 75, 90]))}; "
          + ", ".join(f"under {k}: {(areas < k).mean():.0%}" for k in (4, 8, 12)))
    for checkpoint in checkpoints:
        model = load_model(checkpoint, "cpu")
        text = model.backbone.embed_labels(list(CLASSES), model.config.templates)
        covered, outside = [], []
        for path, label in zip(paths, labels):
            pixels = backbone_pixels(model.backbone, np.asarray(Image.open(path).convert("RGB")))
            fires = model.activation_maps(EncodedViews(pixels, model.backbone), text)[0].numpy() > model.config.background_threshold
            for index in np.intersect1d(np.unique(label), things):
                region = label == index
                covered.append(fires[index][region].mean())
                outside.append(fires[index][~region].sum() / max(fires[index].sum(), 1))
        print(f"{checkpoint}: a present thing's map covers {np.mean(covered):.0%} of it; "
              f"{np.mean(outside):.0%} of the map lies outside it")


@torch.no_grad()
def readout(test: Path, path: Path) -> None:
    held = read_held_out(test)
    tiny_clip.check_unseen(path, held.name)
    backbone = ClipBackbone(tiny_clip.backbone_config(path))
    method = CLSReadout(backbone)
    text = backbone.embed_labels(list(CLASSES), DEFAULT_TEMPLATES)
    paths = sorted((test / "JPEGImages").glob("*.png"))
    free, restricted, errors, instances = [], [], {}, dict.fromkeys(held.unseen_things, 0)
    for path_ in paths:
        label = np.asarray(Image.open(test / "SegmentationClass" / path_.name)).astype(np.int64)
        pixels = backbone_pixels(backbone, np.asarray(Image.open(path_).convert("RGB")))
        logits = method.logits(EncodedViews(pixels, backbone), text)[0]
        present = np.unique(label)
        hidden = torch.ones(len(CLASSES), dtype=torch.bool)
        hidden[torch.from_numpy(present)] = False
        prediction = logits.argmax(0).numpy()
        free.append(scene_totals(prediction, label))
        restricted.append(scene_totals(logits.masked_fill(hidden[:, None, None], -2.0).argmax(0).numpy(), label))
        for index in present:
            name = CLASSES[index]
            if name in instances:
                instances[name] += 1
            if name in STUFF:
                continue
            wrong = prediction[(label == index) & (prediction != index)]
            errors["right"] = errors.get("right", 0) + int(((label == index) & (prediction == index)).sum())
            for other, count in zip(*np.unique(wrong, return_counts=True)):
                guess = CLASSES[other]
                kind = ("stuff" if guess in STUFF else "a thing of the same colour" if guess.split()[0] == name.split()[0]
                        else "a thing of the same pattern" if guess.split()[1] == name.split()[1] else "another thing")
                kind += " in the scene" if other in present else " not in the scene"
                errors[kind] = errors.get(kind, 0) + int(count)
    for title, totals in (("readout", free), ("readout, argmax over the scene's own classes", restricted)):
        scores = group_miou(np.sum(totals, axis=0), held.name)
        print(f"{title}: " + ", ".join(f"{key} {float(value):.1f}" for key, value in scores.items()))
    print(f"{len(paths)} scenes of held-out set {held.name!r}; scenes holding each unseen thing: " + ", ".join(f"{n} {c}" for n, c in instances.items()))
    total = sum(errors.values())
    print("thing pixels: " + ", ".join(f"{kind} {count / total:.1%}" for kind, count in
                                      sorted(errors.items(), key=lambda item: -item[1])))


@torch.no_grad()
def phrases(path: Path, clip_path: Path) -> None:
    names = sorted({p for line in path.read_text().splitlines() if line.strip() for p in json.loads(line)["phrases"]})
    backbone = ClipBackbone(tiny_clip.backbone_config(clip_path))
    text = backbone.embed_texts(names, TrainConfig().phrase_templates)
    cosine = (text @ text.T)[~torch.eye(len(names), dtype=torch.bool)]
    quantile = LossConfig().absent_text_quantile
    print(f"{len(names)} distinct phrases; cosine between them: mean {cosine.mean():.2f}, std {cosine.std():.2f}; "
          f"text_gate at quantile {quantile}: {float(text_gate(text, quantile)):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("clip").add_argument("--clip", type=Path, default=SHIPPED_CLIP)
    inspect = commands.add_parser("maps")
    inspect.add_argument("checkpoint")
    inspect.add_argument("test", type=Path)
    inspect.add_argument("--images", type=int, default=8)
    pooling = commands.add_parser("regions")
    pooling.add_argument("--clip", type=Path, default=SHIPPED_CLIP)
    pooling.add_argument("--scenes", type=int, default=300)
    confusion = commands.add_parser("readout")
    confusion.add_argument("test", type=Path)
    confusion.add_argument("--clip", type=Path, help="default: the shipped CLIP of the folder's held-out set")
    mined = commands.add_parser("phrases")
    mined.add_argument("path", type=Path)
    mined.add_argument("--clip", type=Path, default=SHIPPED_CLIP)
    size = commands.add_parser("sizes")
    size.add_argument("test", type=Path)
    size.add_argument("checkpoints", nargs="*")
    args = parser.parse_args()
    if args.command == "clip":
        clip(args.clip)
    elif args.command == "regions":
        regions(args.clip, args.scenes)
    elif args.command == "phrases":
        phrases(args.path, args.clip)
    elif args.command == "readout":
        readout(args.test, args.clip or SHIPPED_CLIPS[read_held_out(args.test).name])
    elif args.command == "sizes":
        sizes(args.test, args.checkpoints)
    else:
        maps(args.checkpoint, args.test, args.images)


if __name__ == "__main__":
    main()
