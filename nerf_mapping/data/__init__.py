"""Dataparsers -> :class:`SceneData`. :func:`load_dataset` autodetects nerfstudio / blender / dtu / 7scenes layouts."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .base import SPLITS, DataError, SceneData, split_indices, subsample
from .blender import load_blender
from .dtu import load_dtu
from .nerfstudio import load_nerfstudio
from .sevenscenes import INTRINSICS_FILE as SEVENSCENES_INTRINSICS, find_root as sevenscenes_root, load_sevenscenes

FORMATS = ("nerfstudio", "blender", "dtu", "7scenes")

__all__ = [
    "FORMATS",
    "SPLITS",
    "DataError",
    "SceneData",
    "detect_format",
    "load_blender",
    "load_dataset",
    "load_dtu",
    "load_nerfstudio",
    "load_sevenscenes",
    "split_indices",
    "subsample",
]


def detect_format(path: Path | str) -> str:
    """'nerfstudio' (transforms.json), 'blender' (transforms_{train,val,test}.json), 'dtu' (cameras*.npz + image/)
    or '7scenes' (camera-intrinsics.txt + frame-XXXXXX.color.jpg, in the folder or its data/ subfolder).

    ``path`` may be the dataset folder or its main file. DataError says what was looked for when nothing matches.
    """
    p = Path(path)
    if p.is_file():
        if p.name == SEVENSCENES_INTRINSICS:
            return "7scenes"
        if p.suffix == ".npz":
            return "dtu"
        if p.name in ("transforms_train.json", "transforms_val.json", "transforms_test.json"):
            return "blender"
        if p.suffix == ".json":
            return "nerfstudio"
        raise DataError(f"{p}: unrecognised dataset file (expected transforms.json, transforms_<split>.json, .npz "
                        f"or {SEVENSCENES_INTRINSICS})")
    if not p.is_dir():
        raise DataError(f"{p}: dataset path does not exist")
    if (p / "transforms.json").is_file():
        return "nerfstudio"
    if any((p / f"transforms_{s}.json").is_file() for s in ("train", "val", "test")):
        return "blender"
    if any(p.glob("cameras*.npz")) and any((p / d).is_dir() for d in ("image", "images")):
        return "dtu"
    if sevenscenes_root(p) is not None:
        return "7scenes"
    raise DataError(
        f"{p}: unrecognised dataset layout (looked for transforms.json [nerfstudio], transforms_train.json "
        f"[blender], cameras*.npz + image/ [dtu], {SEVENSCENES_INTRINSICS} + *.color.jpg in the folder or data/ "
        f"[7scenes])"
    )


def load_dataset(
    path,
    split: str = "train",
    downscale: int = 1,
    background=(1.0, 1.0, 1.0),
    test_every: int = 8,
    *,
    max_frames: int | None = None,
    format: str | None = None,
    cameras_file: str | Path | None = None,
    num_workers: int | None = None,
) -> SceneData:
    """Load a dataset split as :class:`SceneData` (see docs/CONTRACTS.md).

    split: "train" | "test" | "val" | "all". Explicit splits where the format has them (Blender jsons, nerfstudio
    *_filenames); otherwise test = val = frames with index % test_every == 0, train = the rest.
    downscale: integer factor (images_N/ folders when present, else area-resized on load).
    background: RGB in [0, 1] for compositing RGBA images.
    Keyword-only extras: max_frames (evenly subsample the split), format (skip autodetection),
    cameras_file (DTU: e.g. "cameras_linear_init.npz"), num_workers (image decoding threads).
    Raises DataError (a ValueError) naming the file and field for malformed or missing data.
    """
    fmt = format or detect_format(path)
    bg: Sequence[float] = tuple(float(b) for b in background)
    if len(bg) != 3:
        raise ValueError(f"background must be 3 floats (RGB in [0,1]), got {background!r}")
    if fmt == "nerfstudio":
        return load_nerfstudio(path, split, downscale, bg, test_every, max_frames, num_workers)
    if fmt == "blender":
        return load_blender(path, split, downscale, bg, test_every, max_frames, num_workers)
    if fmt == "dtu":
        return load_dtu(path, split, downscale, bg, test_every, max_frames, num_workers, cameras_file=cameras_file)
    if fmt == "7scenes":
        return load_sevenscenes(path, split, downscale, bg, test_every, max_frames, num_workers)
    raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
