"""Typed-config helpers: nested dataclasses <-> plain dicts (JSON), so every checkpoint carries its full config."""
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
