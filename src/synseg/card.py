"""The model card (README.md) beside a checkpoint's config.json and model.safetensors, so a run folder can be uploaded
to the Hugging Face hub as it is: hub metadata, how to load it, backbone, data, recipe, and evaluation once scored."""
from __future__ import annotations

import re
from pathlib import Path

from synseg.io import atomic_path

CARD = "README.md"
EVALUATION = "## Evaluation"


def model_card(name: str, train_config, data: str, parameters: int) -> str:
    """The card of a finished run; `train_config` is a TrainConfig (its model and loss are described)."""
    model, loss = train_config.model, train_config.loss
    backbone = model.backbone
    weights = backbone.pretrained or "random weights"
    losses = ", ".join(f"{term} {getattr(loss, term):g}" for term in ("intra_align", "intra_separate", "inter_background",
                                                                     "inter_foreground", "absent_suppress"))
    return f"""---
library_name: synseg
license: mit
pipeline_tag: image-segmentation
tags: [synseg, open-vocabulary, semantic-segmentation, clip]
---

# {name}

An open-vocabulary semantic segmentation model trained with synseg (SynSeg: Feature Synergy Structure + Multi-Category
Contrastive Learning) from images and their captions alone.

```bash
synseg segment photo.jpg --labels "cat, sofa, rug" --checkpoint ORG/NAME   # this folder's hub id, or its path
synseg app --checkpoint ORG/NAME
```

## Backbone

Frozen open_clip `{backbone.name}` ({weights}), tokens from layers {list(backbone.layers) if backbone.layers else "default"};
{parameters:,} trained parameters (FiLM, CLIPSeg-style decoder of width {model.decoder.reduce_dim}, projector) in
`model.safetensors`; `config.json` rebuilds the model. Background threshold {model.background_threshold:g}.

## Data

`{data}`: {train_config.iterations:,} iterations of {train_config.batch_size} images with up to
{train_config.max_phrases} noun phrases each ({train_config.iterations * train_config.batch_size:,} image samples).

## Recipe

AdamW, learning rate {train_config.lr:g}, weight decay {train_config.weight_decay:g}, {train_config.warmup} warm-up
iterations then cosine decay, seed {train_config.seed}, images resized by `{train_config.resize}`. Loss weights: {losses}.

{EVALUATION}

Not evaluated yet: `synseg eval --checkpoint THIS_FOLDER --benchmark voc,context,object,stuff,city,ade --root DATA --card`
writes the table here.
"""


def write_evaluation(folder: Path, table: str, command: str) -> Path:
    """Replace the card's evaluation section (or add one) with `table` and the command that produced it."""
    path = folder / CARD
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    section = f"{EVALUATION}\n\nmIoU (%), from `{command}`:\n\n{table}\n"
    pattern = re.compile(rf"^{re.escape(EVALUATION)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text, count=1) if pattern.search(text) else text.rstrip() + "\n\n" + section
    with atomic_path(path) as tmp:
        tmp.write_text(text.rstrip() + "\n", encoding="utf-8")
    return path
