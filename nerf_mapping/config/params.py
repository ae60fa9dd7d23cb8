"""Flat, dotted parameters from typed config dataclasses: the one route from a dataclass default to a ROS parameter, a
YAML file or a ``--set`` override.

A config dataclass declares each knob once, with its type, default and a docstring under the field (nerfstudio's
habit). :func:`flatten` walks nested dataclasses into parameters named by their dotted field paths
(``keyframe.min_translation``), with the field docstring as the description; :func:`build` makes the dataclass back
from any ``get(name)`` (the node's parameter server, a YAML mapping), converting each value to the field's type;
:func:`set_param` applies one ``name=value``; :func:`to_yaml` writes a parameter file whose values and comments are
the dataclasses'. So the node's parameters, ``config/mapper.yaml`` and the benchmarks' ``--set`` cannot disagree
with the defaults (tests hold the shipped YAML equal to :func:`to_yaml`).

Conventions: a field with ``metadata={"param": False}`` is not a parameter (set by the caller, e.g. a path derived
from another parameter). Tuples become lists (ROS arrays); an empty tuple of strings is declared as ``[""]`` (ROS
cannot type an empty array) and blank strings are dropped when it is read back. A field annotated with a union
(``tuple[float, ...] | str``, ``str | bool``) takes values of either type (:attr:`Param.dynamic`).
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import json
import re
import textwrap
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Iterable


@dataclass(frozen=True)
class Param:
    """One flat parameter: dotted ``name``, ``default`` (ROS-declarable: lists, never tuples or None), the field's
    ``type`` annotation, ``description`` (the field docstring) and whether it is ``dynamic`` (a union type)."""

    name: str
    default: Any
    type: Any
    description: str
    dynamic: bool


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """{field name: docstring} of dataclass ``cls`` (the string literal right under each field, whitespace folded);
    bases first, so a subclass's docstring wins."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
                docs[node.target.id] = _plain(nxt.value.value)
    return docs


def _plain(doc: str) -> str:
    """A docstring as one line of plain text (what a ROS parameter description or a YAML comment shows): Sphinx
    roles and double backquotes dropped, whitespace folded."""
    doc = re.sub(r":\w+:`~?\.?([^`]+)`", r"\1", doc).replace("``", "")
    return " ".join(doc.split())


def _is_union(t) -> bool:
    return typing.get_origin(t) in (typing.Union, types.UnionType)


def _declarable(value, t):
    """A default as a ROS parameter value: tuples -> lists, an empty string tuple -> [""]."""
    if isinstance(value, tuple):
        if not value:
            args = typing.get_args(t) if not _is_union(t) else ()
            return [""] if (args and args[0] is str) else []
        return list(value)
    return value


def flatten(cfg, prefix: str = "") -> list[Param]:
    """Every parameter of dataclass instance ``cfg`` (nested dataclasses recursed), in declaration order."""
    hints = typing.get_type_hints(type(cfg))
    docs = field_docs(type(cfg))
    out: list[Param] = []
    for f in dataclasses.fields(cfg):
        if not f.metadata.get("param", True):
            continue
        value, t = getattr(cfg, f.name), hints[f.name]
        name = prefix + f.name
        if dataclasses.is_dataclass(value):
            out.extend(flatten(value, name + "."))
            continue
        out.append(Param(name, _declarable(value, t), t, docs.get(f.name, ""), _is_union(t)))
    return out


def convert(value, t, name: str = "value"):
    """``value`` (from ROS, YAML or text) as type ``t`` of a config field; ValueError naming ``name`` otherwise."""
    if _is_union(t):
        if isinstance(value, (list, tuple)):
            return tuple(value)
        return value
    origin = typing.get_origin(t)
    try:
        if origin is tuple:
            if isinstance(value, str):
                value = [v for v in value.strip().strip("[]()").replace(",", " ").split()]
            args = typing.get_args(t)
            item = args[0] if args else str
            items = [v for v in value if not (item is str and not str(v).strip())]
            return tuple(convert(v, item, name) for v in items)
        if t is bool:
            if isinstance(value, str):
                v = value.strip().lower()
                if v not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError
                return v in ("1", "true", "yes", "on")
            return bool(value)
        if t is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if t is float:
            return float(value)
        if t is str:
            return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected {getattr(t, '__name__', t)}, got {value!r}") from None
    return value


def build(cls: type, get: Callable[[str], Any], prefix: str = ""):
    """Dataclass ``cls`` with every parameter read through ``get(dotted name)`` and converted to its field's type
    (fields that are not parameters keep their defaults)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if not f.metadata.get("param", True) or not f.init:
            continue
        t, name = hints[f.name], prefix + f.name
        if dataclasses.is_dataclass(t):
            kwargs[f.name] = build(t, get, name + ".")
        else:
            kwargs[f.name] = convert(get(name), t, name)
    return cls(**kwargs)


def set_param(cfg, name: str, value) -> None:
    """Set dotted parameter ``name`` of ``cfg`` (nested dataclasses) to ``value`` converted to the field's type
    (a YAML-parsed value or text); ValueError for an unknown name or a value of the wrong type."""
    obj, parts = cfg, name.split(".")
    for p in parts[:-1]:
        sub = getattr(obj, p, None)
        if not dataclasses.is_dataclass(sub):
            raise ValueError(f"unknown parameter {name!r}")
        obj = sub
    fields = {f.name: f for f in dataclasses.fields(obj)}
    f = fields.get(parts[-1])
    if f is None or not f.metadata.get("param", True) or dataclasses.is_dataclass(getattr(obj, parts[-1])):
        raise ValueError(f"unknown parameter {name!r}")
    setattr(obj, parts[-1], convert(value, typing.get_type_hints(type(obj))[parts[-1]], name))


def apply_sets(cfg, items: Iterable[str]) -> None:
    """``KEY=VALUE`` items (a CLI's ``--set``): each value is parsed as YAML (``[1, 2]``, ``true``, ``0.5``) and set
    with :func:`set_param`."""
    import yaml

    for it in items:
        if not str(it).strip():
            continue
        if "=" not in it:
            raise ValueError(f"--set expects KEY=VALUE, got {it!r}")
        k, v = (s.strip() for s in it.split("=", 1))
        set_param(cfg, k, yaml.safe_load(v) if v else "")


# ------------------------------------------------------------------------------------------------------------- YAML
def _scalar(v) -> str:
    """A YAML scalar or flow list that reads back (PyYAML and ROS's parser) as ``v``."""
    import yaml

    if isinstance(v, list):
        return "[" + ", ".join(_scalar(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        r = repr(v)
        return r.replace("e", ".0e") if "e" in r and "." not in r else r
    if isinstance(v, int):
        return str(v)
    s = str(v)
    try:
        plain_ok = s != "" and yaml.safe_load(s) == s and ":" not in s and "#" not in s and "{" not in s
    except yaml.YAMLError:
        plain_ok = False
    return s if plain_ok else json.dumps(s)


def _grouped(params: list[Param]) -> list[Param]:
    """``params`` reordered so that each dotted group is contiguous (a YAML mapping may not repeat a key), groups in
    the order of their first parameter."""
    tree: dict = {}
    for p in params:
        node = tree
        for part in p.name.split(".")[:-1]:
            node = node.setdefault(part, {})
        node[p.name] = p

    def walk(node: dict) -> list[Param]:
        return [x for v in node.values() for x in ([v] if isinstance(v, Param) else walk(v))]

    return walk(tree)


def to_yaml(params: list[Param], node_name: str, header: str = "", width: int = 118) -> str:
    """A ROS 2 parameter file for ``node_name`` holding ``params`` (dotted names nested as YAML mappings, each
    preceded by its description as a comment)."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    lines += [f"{node_name}:", "  ros__parameters:"]
    open_path: list[str] = []
    for p in _grouped(params):
        *path, leaf = p.name.split(".")
        common = 0
        while common < min(len(path), len(open_path)) and path[common] == open_path[common]:
            common += 1
        for depth in range(common, len(path)):
            lines.append("    " + "  " * depth + f"{path[depth]}:")
        open_path = path
        indent = "    " + "  " * len(path)
        for text in textwrap.wrap(p.description, width - len(indent) - 2) or [""]:
            lines.append(f"{indent}# {text}".rstrip())
        lines.append(f"{indent}{leaf}: {_scalar(p.default)}")
    return "\n".join(lines) + "\n"
