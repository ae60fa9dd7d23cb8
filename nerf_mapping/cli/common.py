"""Helpers shared by the sub-commands (public: feature modules that register their own commands use them).

This is the only layer that turns errors into ``SystemExit`` with a one-line message: the library raises
``ValueError`` / ``DataError`` / ``FileNotFoundError``, the CLI reports them without a traceback.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_impl_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--field-impl", choices=["auto", "native", "torch", "tcnn"], default="auto",
                   help="hash-encoding implementation (auto: tcnn on CUDA if installed, else the native CPU kernel, "
                        "else pure PyTorch)")


def add_config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any trainer config field, e.g. --set field.encoding.log2_hashmap_size=17")


def exit_on_error(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, with the library's input errors reported as ``SystemExit('error: ...')``."""
    from nerf_mapping.data import DataError

    try:
        return fn(*args, **kwargs)
    except (DataError, FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None


def print_and_write_json(res: dict, path=None, summary: dict | None = None, label: str | None = "results",
                         default=None) -> None:
    """A command's result: print ``summary`` (when given) as indented JSON, then write the whole ``res`` to ``path``
    (``--json``; parent folders created; nothing when None) and print ``<label>: <path>`` (unless ``label`` is None).
    ``default`` is ``json.dumps``'s fallback for values JSON has no type for (``str`` for paths)."""
    import json

    if summary is not None:
        print(json.dumps(summary, indent=2, default=default))
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(res, indent=2, default=default))
        if label:
            print(f"{label}: {path}")


def configure(data, args, pose_mode: str | None = None, seed: int | None = None, preset=None, background=None):
    """:func:`nerf_mapping.config.presets.offline_config` with the command's ``--field-impl`` and ``--set``."""
    from nerf_mapping.config.presets import offline_config

    return exit_on_error(offline_config, data, pose_mode=pose_mode, overrides=args.set,
                         field_impl=getattr(args, "field_impl", "auto"), background=background, seed=seed,
                         preset=preset)


def load_data(path, split, downscale, max_frames=None, background=None):
    """:func:`nerf_mapping.data.load_dataset` for a command (a clean error for a bad path or dataset)."""
    from nerf_mapping.data import load_dataset

    kw = {} if background is None else {"background": background}
    return exit_on_error(load_dataset, path, split=split, downscale=downscale, max_frames=max_frames, **kw)


def load_trainer(path):
    """A trained checkpoint for inference (no optimiser state); a clean error when it is missing or unreadable."""
    from nerf_mapping.training.trainer import Trainer

    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"error: checkpoint {p} not found")
    try:
        return Trainer.load(p, with_optimizer=False)
    except Exception as e:  # noqa: BLE001 - report any unreadable checkpoint cleanly
        raise SystemExit(f"error: cannot load checkpoint {p}: {e}")
