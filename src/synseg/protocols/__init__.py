"""Evaluation protocols, independent of the method, each known by one name to every command.

`synseg` (5 views at the backbone's size, the paper's), `whole` (one view), `slide` (SCLIP's and NACLIP's 336/224/112)
and `slide-tcl` (TCL's and ClearCLIP's 448/448/224); `slide:S/W/T` for any short side, window and stride.
"""
from __future__ import annotations

from synseg.errors import UserError
from synseg.protocols.base import Protocol
from synseg.protocols.slide import Slide
from synseg.protocols.views import Views

SLIDE_PRESETS = {"slide": (336, 224, 112), "slide-tcl": (448, 448, 224)}
PROTOCOL_NAMES = ("synseg", "whole", *SLIDE_PRESETS)


def build_protocol(text: str, pamr: bool = False, views: int | None = None) -> Protocol:
    """A protocol by name; `views` (1 or 5) is the synseg protocol's view count (`--views`), 1 being `whole`."""
    name, _, spec = text.strip().lower().partition(":")
    if name == "synseg" and not spec:
        return Views(views or 5, pamr)
    if name == "whole" and not spec:
        return Views(1, pamr)
    if name == "slide" and spec:
        try:
            short, window, stride = (int(v) for v in spec.split("/"))
        except ValueError:
            raise UserError(f"protocol '{text}': write slide:SHORT/WINDOW/STRIDE in pixels, e.g. slide:336/224/112") from None
        if min(short, window, stride) < 1:
            raise UserError(f"protocol '{text}': short side, window and stride must be positive")
        return Slide(short, window, stride, pamr, name=f"slide:{short}/{window}/{stride}")
    if name in SLIDE_PRESETS and not spec:
        return Slide(*SLIDE_PRESETS[name], pamr, name=name)
    raise UserError(f"unknown protocol '{text}' (choose from {', '.join(PROTOCOL_NAMES)}, or slide:SHORT/WINDOW/STRIDE)")


def parse_protocols(text: str, pamr: bool = False, views: int | None = None) -> list[Protocol]:
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise UserError("protocol must be a comma-separated list with no empty entries")
    return [build_protocol(part, pamr, views) for part in dict.fromkeys(parts)]


__all__ = ["PROTOCOL_NAMES", "Protocol", "Slide", "Views", "build_protocol", "parse_protocols"]
