"""Pictures of a segmentation: palette label maps, overlays with a legend, per-label heat maps (PIL only)."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont


LEGEND_CHARS = 40  # longer label names are cut in the legend


def palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map (bit-interleaved), the one segmentation tools already show."""
    colours = np.zeros((n, 3), dtype=np.uint8)
    for index in range(n):
        c, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colours[index] = (r, g, b)
    return colours


def label_map_image(label_map: np.ndarray, classes: int) -> Image.Image:
    """A PNG whose pixel values are the class indices themselves: a palette PNG for up to 256 classes, 16-bit grey
    beyond (a palette holds 256 colours; indices would wrap around)."""
    if classes > 65536:
        raise ValueError(f"{classes} classes do not fit a 16-bit PNG")
    if classes > 256:
        return Image.fromarray(label_map.astype(np.uint16))
    image = Image.fromarray(label_map.astype(np.uint8), mode="P")
    image.putpalette(palette().flatten().tolist())
    return image


SHOWN = 384  # longer side under which a picture is enlarged for showing


def enlargement(width: int, height: int) -> int:
    """The whole factor that brings a small picture (a 64-px generated scene) to about SHOWN px; 1 for photos."""
    return max(1, -(-SHOWN // max(width, height)))


def enlarge(image: Image.Image) -> Image.Image:
    """Small pictures enlarged by a whole factor with nearest neighbours, so each pixel stays a sharp square."""
    factor = enlargement(*image.size)
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST) if factor > 1 else image


def overlay(image: Image.Image, label_map: np.ndarray, names: list[str], alpha: float = 0.5) -> Image.Image:
    """Colours blended over the photo, and a legend of the names present, right of it. A small image is enlarged
    first (`enlarge`), else the legend's text would dwarf it."""
    colours = palette(max(256, len(names)))
    factor = enlargement(*image.size)
    rgb = np.asarray(enlarge(image.convert("RGB")), dtype=np.float32)
    label_map = label_map.repeat(factor, axis=0).repeat(factor, axis=1)
    blended = (1 - alpha) * rgb + alpha * colours[label_map].astype(np.float32)
    picture = Image.fromarray(blended.clip(0, 255).astype(np.uint8))
    present = [int(i) for i in np.unique(label_map)] or list(range(len(names)))
    names = [" ".join(name.split()) for name in names]  # one line each: a label may hold a line break
    names = [name if len(name) <= LEGEND_CHARS else name[: LEGEND_CHARS - 1] + "…" for name in names]
    font = ImageFont.load_default(size=max(12, min(28, picture.height // 20)))
    line = int(font.size * 1.5)
    legend_width = int(max(ImageDraw.Draw(picture).textlength(names[i], font=font) for i in present)) + line + 16
    canvas = Image.new("RGB", (picture.width + legend_width, max(picture.height, line * len(present) + 8)), "white")
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for row, index in enumerate(present):
        top = 4 + row * line
        x = picture.width + 6
        draw.rectangle([x, top + 2, x + line - 6, top + line - 4], fill=tuple(int(v) for v in colours[index]), outline="black")
        draw.text((x + line, top + 2), names[index], fill="black", font=font)
    return canvas


def heat_map(activation: np.ndarray) -> Image.Image:
    """An activation map in [0, 1] (values outside are clipped), [H, W], as an 8-bit grey image of the same size
    (0 = none, 255 = full): the heat maps `synseg segment` writes and `synseg app` shows (there `enlarge`d)."""
    return Image.fromarray((np.clip(activation, 0, 1) * 255 + 0.5).astype(np.uint8), mode="L")
