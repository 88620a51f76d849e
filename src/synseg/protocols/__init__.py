"""Evaluation protocols, independent of the method, each known by one name to every command.

`quadrants` (the whole image and its 4 quadrants at the backbone's size, the paper's), `whole` (the whole image alone), `slide` (SCLIP's and NACLIP's 336/224/112)
and `slide-tcl` (TCL's and ClearCLIP's 448/448/224); `slide:S/W/T` for any short side, window and stride.
"""
from __future__ import annotations

from synseg.errors import UserError
from synseg.protocols.base import Protocol
from synseg.protocols.slide import Slide
from synseg.protocols.views import Views

SLIDE_PRESETS = {"slide": (336, 224, 112), "slide-tcl": (448, 448, 224)}
PROTOCOL_NAMES = ("quadrants", "whole", *SLIDE_PRESETS)
DEFAULT_PROTOCOL = "quadrants"


def build_protocol(text: str, pamr: bool = False) -> Protocol:
    """A protocol by name (PROTOCOL_NAMES, or slide:SHORT/WINDOW/STRIDE); unknown names raise UserError."""
    name, _, spec = text.strip().lower().partition(":")
    if name == "quadrants" and not spec:
        return Views(5, pamr)
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


def parse_protocols(text: str, pamr: bool = False) -> list[Protocol]:
    """A comma-separated list of protocols, duplicates dropped."""
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise UserError("protocol must be a comma-separated list with no empty entries")
    return [build_protocol(part, pamr) for part in dict.fromkeys(parts)]


__all__ = ["DEFAULT_PROTOCOL", "PROTOCOL_NAMES", "Protocol", "Slide", "Views", "build_protocol", "parse_protocols"]
