"""Dataclass configs to and from JSON, strictly: an unknown key is an error, not a silent default."""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from synseg.errors import UserError

T = TypeVar("T")


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def from_dict(cls: type[T], data: dict, where: str = "config") -> T:
    """Rebuild a (nested) dataclass, checking every value's type against the field's annotation (a JSON number where
    a string belongs is an error here, not a crash later); tuples come back as tuples. Range checks are the
    dataclasses' own (`__post_init__`), reported with `where`."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)} for {cls.__name__}")
    values = {name: _typed(value, hints[name], f"{where}.{name}") for name, value in data.items()}
    try:
        return cls(**values)
    except (UserError, ValueError, TypeError) as error:
        raise UserError(f"{where}: {error}") from None


def _typed(value: Any, kind: Any, where: str) -> Any:
    """`value` as the annotation `kind` wants it, or a one-line error naming the field."""
    origin = typing.get_origin(kind)
    if isinstance(kind, types.UnionType) or origin is typing.Union:
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        others = [o for o in options if o is not type(None)]
        if len(others) == 1:
            return _typed(value, others[0], where)
        for option in others:
            try:
                return _typed(value, option, where)
            except UserError:
                continue
        raise UserError(f"{where}: {value!r} is not {' or '.join(_name(o) for o in options)}")
    if dataclasses.is_dataclass(kind):
        return from_dict(kind, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: expected a list, got {value!r}")
        item = typing.get_args(kind)[0]
        return tuple(_typed(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    ok = {
        bool: lambda: isinstance(value, bool),
        int: lambda: isinstance(value, int) and not isinstance(value, bool),
        float: lambda: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: lambda: isinstance(value, str),
        dict: lambda: isinstance(value, dict),
    }.get(origin or kind)
    if ok is not None and not ok():
        raise UserError(f"{where}: expected {_name(kind)}, got {value!r}")
    return float(value) if kind is float else value


def _name(kind: Any) -> str:
    return {type(None): "null", str: "a string", int: "an integer", float: "a number", bool: "true or false",
            dict: "an object"}.get(kind, getattr(kind, "__name__", str(kind)))


def check(name: str, value: Any, ok: bool, what: str) -> None:
    """Range checks of config dataclasses (`__post_init__`): a one-line error naming the field."""
    if not ok:
        raise UserError(f"{name} must be {what}, got {value!r}")


def check_templates(name: str, templates: tuple[str, ...]) -> None:
    """Prompt templates: at least one, each with exactly one `{}` where the label goes."""
    ok = len(templates) > 0 and all(isinstance(t, str) and t.count("{}") == 1 and t.count("{") == 1 for t in templates)
    check(name, list(templates), ok, "a non-empty list of strings, each with one {} for the label")


def positive_int(name: str, value: Any, low: int = 1) -> None:
    check(name, value, isinstance(value, int) and not isinstance(value, bool) and value >= low, f"an integer >= {low}")


def finite(name: str, value: Any, low: float = 0.0, high: float = math.inf, open_low: bool = False) -> None:
    """A number in [low, high] (or (low, high] with open_low)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    inside = number and (value > low if open_low else value >= low) and value <= high
    bounds = f"{'(' if open_low else '['}{low:g}, {high:g}]" if math.isfinite(high) else f"{'>' if open_low else '>='} {low:g}"
    check(name, value, inside, f"a finite number {'in ' if math.isfinite(high) else ''}{bounds}")


def merged(base: dict, overrides: dict) -> dict:
    """`base` with `overrides` laid over it, nested dicts merged key by key (neither is changed)."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def write_json(data: dict, path: str | Path) -> None:
    """Readable UTF-8 JSON; ASCII escapes only where a text cannot be UTF-8 (a file name with undecodable bytes)."""
    from synseg.io import atomic_path

    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:
        encoded = (json.dumps(data, indent=2) + "\n").encode("ascii")
    with atomic_path(path) as tmp:
        tmp.write_bytes(encoded)


def read_json(path: str | Path, what: str = "file") -> dict:
    """A JSON file whose top level must be an object (every config and layout file synseg reads), or a one-line
    error: missing, not text, not JSON, or a list or number where the object belongs."""
    from synseg.io import read_text

    try:
        data = json.loads(read_text(path, what))
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected an object {{...}} at the top level, got {_json_kind(data)}")
    return data


def _json_kind(value: Any) -> str:
    return {list: "a list", str: "a string", bool: "true or false", type(None): "null"}.get(type(value), "a number")
