"""Typed-config helpers: nested dataclasses <-> plain dicts (JSON), so every checkpoint carries its full config, and
dotted overrides (``--set field.encoding.log2_hashmap_size=17``) that reach every knob."""
from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def to_dict(cfg: Any) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(cls: type[T], data: dict) -> T:
    """Build dataclass ``cls`` from ``data`` (unknown keys are an error, missing keys take defaults)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config keys {sorted(unknown)}")
    kwargs = {}
    for k, v in data.items():
        t = hints.get(k)
        if dataclasses.is_dataclass(t) and isinstance(v, dict):
            kwargs[k] = from_dict(t, v)
        elif isinstance(v, list) and typing.get_origin(t) is tuple:
            kwargs[k] = tuple(v)
        else:
            kwargs[k] = v
    return cls(**kwargs)


def _optional(obj, name: str) -> bool:
    """Whether dataclass field ``name`` of ``obj`` admits None (``X | None``)."""
    try:
        hint = typing.get_type_hints(type(obj))[name]
    except Exception:  # noqa: BLE001 - unresolvable annotations: treat as not optional
        return False
    return type(None) in typing.get_args(hint)


def override(cfg, path: str, value) -> None:
    """Set a nested config field by dotted path, e.g. ``override(cfg, "field.encoding.log2_hashmap_size", 17)``."""
    obj = cfg
    parts = path.split(".")
    for p in parts[:-1]:
        obj = getattr(obj, p)
    names = {f.name: f for f in dataclasses.fields(obj)}
    if parts[-1] not in names:
        raise ValueError(f"unknown config field '{path}'")
    cur = getattr(obj, parts[-1])
    if isinstance(value, str) and value.strip().lower() == "none" and (cur is None or _optional(obj, parts[-1])):
        value = None  # an optional field switched off (``pose.c2f=none``, ``threads=none``)
    elif isinstance(value, str) and (isinstance(cur, tuple) or (cur is None and "," in value)):
        # a tuple field (``background=0,0,0``, ``pose.c2f=0.1,0.5``)
        try:
            value = tuple(float(x) for x in value.split(",") if x.strip())
        except ValueError:
            raise ValueError(f"'{path}' expects comma-separated numbers, got '{value}'") from None
        if isinstance(cur, tuple) and len(value) != len(cur):
            raise ValueError(f"'{path}' expects {len(cur)} numbers, got {len(value)}")
    elif isinstance(cur, bool):
        value = str(value).lower() in ("1", "true", "yes", "on")
    elif isinstance(cur, int) and not isinstance(cur, bool):
        value = int(value)
    elif isinstance(cur, float):
        value = float(value)
    elif cur is None:  # an optional number (e.g. ``threads``): int when it reads as one, else float, else as given
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except (TypeError, ValueError):
                pass
    setattr(obj, parts[-1], value)
