"""Reading images of any mode, and writing files atomically so a killed run never leaves a half-written one."""
from __future__ import annotations

import codecs
import contextlib
import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, TYPE_CHECKING, Iterable, Iterator

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


MAX_PIXELS_DEFAULT = 40_000_000
UNREADABLE = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError, EOFError)


def max_pixels() -> int:
    """synseg's own limit on an image's pixels, read from its header before decoding: a 126-byte PNG can declare
    30000x30000 pixels, and segmenting it at full resolution with 21 labels would need ~80 GB. 40 MP admits every
    common camera; SYNSEG_MAX_PIXELS raises or lowers it."""
    text = os.environ.get("SYNSEG_MAX_PIXELS", "")
    try:
        value = int(text) if text else MAX_PIXELS_DEFAULT
    except ValueError:
        raise UserError(f"SYNSEG_MAX_PIXELS must be a whole number of pixels, got {text!r}") from None
    if value < 1:
        raise UserError(f"SYNSEG_MAX_PIXELS must be at least 1, got {value}")
    return value


def check_size(width: int, height: int, name: str | os.PathLike) -> None:
    """Raise the one-line error for an image whose declared size is empty or above `max_pixels()`."""
    limit = max_pixels()
    if width < 1 or height < 1:
        raise UserError(f"image {name} is {width}x{height}: it has no pixels")
    if width * height > limit:
        raise UserError(f"image {name} is {width}x{height} = {width * height / 1e6:.0f} megapixels, above synseg's limit "
                        f"of {limit / 1e6:g} (set SYNSEG_MAX_PIXELS to raise it)")


@contextlib.contextmanager
def open_image(source: str | os.PathLike | bytes, name: str | os.PathLike | None = None) -> Iterator[Image.Image]:
    """PIL's Image.open with synseg's pixel limit in place of PIL's (checked on the header, before any decoding) and
    one-line errors for whatever cannot be read. `name` is what the messages call it."""
    name = name or source
    try:
        previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # ours replaces PIL's warning and bomb error
        try:
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        finally:
            Image.MAX_IMAGE_PIXELS = previous
    except FileNotFoundError:
        raise UserError(f"image not found: {name}") from None
    except UNREADABLE as error:
        raise UserError(f"not a readable image: {name} ({error.__class__.__name__})") from None
    with image:
        check_size(*image.size, name)
        try:
            yield image
        except UNREADABLE as error:
            raise UserError(f"not a readable image: {name} ({error.__class__.__name__}: {str(error)[:80]})") from None


def image_tensor(image: Image.Image, device: torch.device | str | None = None) -> torch.Tensor:
    """[3, H, W] float32 torch tensor in [0, 1] on `device`; the 8-bit pixels travel there (4x fewer bytes than
    float). One tensor given to several Segmenters lets them share their views (and, for methods on one backbone,
    CLIP's forward)."""
    import torch

    return torch.from_numpy(np.array(to_rgb(image))).to(device).permute(2, 0, 1).float().div_(255)


def check_image(path: str | os.PathLike) -> Path:
    """Fail early, in one line, on a missing, non-image, oversized (by its header, before decoding) or damaged file:
    decoded once and dropped, so that a command that checks its inputs first never stops halfway through them with
    the outputs of some written and not of the rest."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image not found: {path}")
    with open_image(path) as image:
        image.load()
    return path


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file as RGB (its first frame), with a one-line error for missing, non-image or oversized files."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image not found: {path}")
    with open_image(path) as image:
        image.load()
        return to_rgb(image)


BYTE_ORDER_MARKS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
                    (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def announced_codec(head: bytes) -> str:
    """The codec whose byte-order mark `head` starts with; UTF-8 where there is none."""
    return next((codec for mark, codec in BYTE_ORDER_MARKS if head.startswith(mark)), "utf-8")


def decode_text(data: bytes, name: str | os.PathLike, errors: str = "strict") -> str:
    """Text in UTF-8, or in the UTF-8/16/32 that a byte-order mark announces; the mark itself is never part of the
    text (Windows editors write one). Anything else is a one-line error naming the line, unless `errors` replaces."""
    codec = announced_codec(data)
    try:
        return data.decode(codec, errors=errors)
    except UnicodeDecodeError as error:
        line = data[: error.start].decode(codec, errors="replace").count("\n") + 1
        raise UserError(f"{name} is not {codec.removesuffix('-sig').upper()} text (line {line}): save it as "
                        f"UTF-8") from None


def read_bytes(path: str | os.PathLike, what: str = "file", size: int = -1) -> bytes:
    """An input file (its first `size` bytes if given), with one-line errors for a missing file, a folder, or no
    permission."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            return file.read(size)
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{what} {path} is a folder; name a file") from None
    except OSError as error:
        raise UserError(f"cannot read {what} {path}: {error.strerror or error}") from None


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """A text input file (`decode_text`), or a one-line error."""
    return decode_text(read_bytes(path, what), path)


def open_lines(path: str | os.PathLike, what: str = "file") -> IO[bytes]:
    """A line-by-line (jsonl) input opened in binary, past a UTF-8 byte-order mark; the readers keep byte offsets,
    so a UTF-16 or UTF-32 file is a one-line error instead of lines that all fail to parse."""
    codec = announced_codec(read_bytes(path, what, size=4))
    if codec not in ("utf-8", "utf-8-sig"):
        raise UserError(f"{path} is {codec.upper()} text: save it as UTF-8, one JSON object per line")
    lines = open(path, "rb")
    lines.seek(len(codecs.BOM_UTF8) if codec == "utf-8-sig" else 0)
    return lines


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block finishes. A path that cannot take
    a file (a folder is there, its folder cannot be made) is a one-line error, whichever command writes it."""
    path = ensure_writable_file(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.fsdecode(os.fsencode(path.name)[:100])}.", suffix=".tmp",
                               dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would make every output private to its writer
        try:
            os.replace(tmp, path)
        except OSError as error:  # the path changed kind since the check
            raise UserError(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def staged_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty folder beside `target` to fill; if the block finishes, it replaces `target` whole, so at every
    instant either the old or the new folder is complete. Modes follow the umask, not mkdtemp's private 0700."""
    target = ensure_folder_target(target)
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


def ensure_writable_file(path: str | os.PathLike) -> Path:
    """Check, before the work that produces it, that an output file can be written: nothing but a regular file (or
    a link to one) in its place, in a folder that exists (or can be made) and is writable."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a folder; name a file")
    if path.exists() and not path.is_file():
        raise UserError(f"cannot write {path}: something other than a file is there")
    ensure_writable_dir(path.parent)
    return path


def ensure_writable_files(paths: Iterable[str | os.PathLike]) -> None:
    """`ensure_writable_file` for every file a command will write, before the first: a bad one would otherwise stop
    the command halfway, its earlier files written and the rest not."""
    folders: set[Path] = set()
    for path in map(Path, paths):
        if os.path.lexists(path):
            ensure_writable_file(path)
        elif path.parent not in folders:
            ensure_writable_dir(path.parent)
        folders.add(path.parent)


def ensure_folder_target(target: str | os.PathLike) -> Path:
    """Check that a folder written whole (`staged_dir`) can take the place of `target`: nothing but a folder there."""
    target = Path(target)
    if os.path.lexists(target) and not target.is_dir():
        raise UserError(f"cannot write folder {target}: a file of that name is in the way")
    ensure_writable_dir(target.parent)
    return target


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create an output folder, or fail in one line if that is impossible."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".synseg-write-test", delete=True)
        probe.close()
    except OSError as error:  # a file where a folder must be, no permission, a full or read-only disk
        raise UserError(f"cannot write to output folder {path}: {error.strerror or error}") from None
    return path
