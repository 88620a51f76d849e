"""Dataclass configs to and from JSON, strictly: an unknown key is an error, not a silent default."""
from __future__ import annotations

import copy
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from synseg.errors import UserError

T = TypeVar("T")


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def from_dict(cls: type[T], data: dict, where: str = "config") -> T:
    """Rebuild a (nested) dataclass; tuples come back as tuples."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)} for {cls.__name__}")
    values = {}
    for name, value in data.items():
        kind = hints[name]
        options = typing.get_args(kind) if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union else (kind,)
        nested = next((o for o in options if dataclasses.is_dataclass(o)), None)
        if nested is not None and isinstance(value, dict):
            value = from_dict(nested, value, f"{where}.{name}")
        elif isinstance(value, list) and any(typing.get_origin(o) is tuple for o in options):
            value = tuple(value)
        values[name] = value
    return cls(**values)


def merged(base: dict, overrides: dict) -> dict:
    """`base` with `overrides` laid over it, nested dicts merged key by key (neither is changed)."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def write_json(data: dict, path: str | Path) -> None:
    from synseg.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def read_json(path: str | Path) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not valid JSON ({error})") from None
