"""Reading images of any mode, and writing files atomically so a killed run never leaves a half-written one."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from synseg.errors import UserError

if TYPE_CHECKING:
    import torch


def to_rgb(image: Image.Image) -> Image.Image:
    """EXIF-rotate and convert any PIL mode (L, P, RGBA, I;16, I, F, CMYK...) to 8-bit RGB."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def image_tensor(image: Image.Image) -> torch.Tensor:
    """[3, H, W] float32 torch tensor in [0, 1]; one tensor given to several Segmenters lets them share their views
    (and, for methods on one backbone, CLIP's forward)."""
    import torch

    return torch.from_numpy(np.array(to_rgb(image))).permute(2, 0, 1).float().div_(255)


def check_image(path: str | os.PathLike) -> Path:
    """Fail early, in one line, on a missing or non-image file (reads the header only)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image not found: {path}")
    try:
        with Image.open(path):
            pass
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise UserError(f"not a readable image: {path} ({error.__class__.__name__})") from None
    return path


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file as RGB, with a one-line error for missing or non-image files."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise UserError(f"not a readable image: {path} ({error.__class__.__name__})") from None


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would make every output private to its writer
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def staged_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty folder beside `target` to fill; if the block finishes, it replaces `target` whole, so at every
    instant either the old or the new folder is complete. Modes follow the umask, not mkdtemp's private 0700."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    old = target.with_name(f".{target.name}.old")
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_UMASK)
        for file in staging.iterdir():
            os.chmod(file, 0o666 & ~_UMASK)
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create an output folder, or fail in one line if that is impossible."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".synseg-write-test", delete=True)
        probe.close()
    except OSError as error:
        raise UserError(f"cannot write to output folder {path}: {error.strerror or error}") from None
    return path
