"""Offline training on a dataset: SceneData -> FrameStore + Trainer with defaults chosen from the scene."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from nerf_mapping.training.frame_store import FrameStore
from nerf_mapping.training.trainer import SceneSpec, Trainer, TrainerConfig


def scene_spec(data) -> SceneSpec:
    return SceneSpec(scene_box=data.scene_box.tolist(), unbounded=bool(data.unbounded),
                     near=float(data.near), far=float(data.far))


def frame_store_from(data, capacity: int | None = None, seed: int = 0) -> FrameStore:
    fs = FrameStore(capacity=capacity, seed=seed)
    for i, img in enumerate(data.images):
        fs.add(img, data.cameras[i : i + 1], depth=data.depths[i] if data.depths is not None else None,
               mask=data.masks[i] if data.masks is not None else None)
    return fs


def _cameras_inside(data) -> bool:
    c = data.cameras.c2w[:, :, 3]
    lo, hi = data.scene_box[0], data.scene_box[1]
    return bool(((c > lo) & (c < hi)).all(dim=-1).float().mean() > 0.5)


def apply_inside_out_preset(cfg: TrainerConfig, scene_box) -> None:
    """CPU settings for inside-out and unbounded captures (a robot or handheld rig in a room, a phone capture with a
    background; also the online node's default).

    Rays cross metres of mostly empty space before the first surface, and on 2 cores a step costs ~0.1 s, so the
    map must be cheap to march: a coarser occupancy grid refreshed often (empty space is carved within seconds),
    a step of ~1/350 of the box diagonal growing with distance (cone marching, like the pixel footprint), a capped
    number of samples per ray for the first, still-transparent steps, and a smaller hash table (finer levels are
    not resolvable at robot camera resolutions anyway).
    """
    box = torch.as_tensor(scene_box, dtype=torch.float32).reshape(2, 3)
    cfg.init_rays_per_step = 512
    cfg.grid.resolution = 64
    cfg.grid.warmup_steps = 16
    cfg.grid.update_every = 8
    cfg.render.step_size = float(torch.linalg.norm(box[1] - box[0])) / 350.0
    cfg.render.cone_angle = 1.0 / 256.0
    cfg.render.max_samples_per_ray = 256
    cfg.field.encoding.log2_hashmap_size = 17
    cfg.field.encoding.max_resolution = 1024
    cfg.target_samples_per_step = 1 << 15


def image_limited_resolution(cameras, scene_box, oversample: float = 2.0, lo: int = 128, hi: int = 2048) -> int:
    """Finest hash-grid resolution the training images of an object-centric capture can constrain.

    A pixel at the scene centre covers ``distance / focal`` scene units (medians over the cameras), so the images
    resolve about ``extent * focal / distance`` cells across the box; ``oversample`` (2: Nyquist) times that, rounded
    up to a power of two and clamped to [lo, hi]. Finer levels see no more detail, only capacity to absorb
    per-view misalignment: with joint pose refinement they let the field explain each camera's residual orbit about
    the object (the weakly observable yaw + sideways-translation direction) instead of correcting it. Lego, 3 deg
    noise: at 100x100 and 1000 steps the median rotation error is 0.21-0.23 deg with 2048, 0.18 deg with 256 (train
    PSNR 31.6 -> 32.8 dB); at 200x200 it is 0.110 / 0.093 deg after 1500 / 2000 steps with 2048 and 0.097 / 0.092
    deg with 512 (train PSNR 31.6 -> 32.4 dB). Hence ``oversample=1`` when the poses are refined (``default_config``):
    ``benchmark poses`` (2000 steps, 1 thread), 512 -> 256: lego 200x200 at 3 deg, 0.092 -> 0.085 deg; DTU scan65
    linear init 200x150, 0.60 -> 0.47 deg and 0.76 -> 0.65 deg on two seeds (3.73 -> 3.06 / 4.40 -> 3.84 mm), 0.53
    deg at 128.
    """
    box = torch.as_tensor(scene_box, dtype=torch.float64).reshape(2, 3)
    centre, extent = (box[0] + box[1]) / 2, float((box[1] - box[0]).max())
    dist = torch.linalg.vector_norm(cameras.c2w[:, :3, 3].double() - centre, dim=-1).median()
    focal = torch.maximum(cameras.fx, cameras.fy).double().median()
    cells = oversample * extent * float(focal) / max(float(dist), 1e-9)
    return int(min(max(2 ** math.ceil(math.log2(max(cells, 1.0))), lo), hi))


def default_config(data, field_impl: str = "auto", background=None, pose_refinement: bool = False) -> TrainerConfig:
    """Defaults for an arbitrary scene: object-centric bounded scenes (cameras outside the box) march finely and cap
    the hash grid at what their images resolve (:func:`image_limited_resolution`); inside-out and unbounded captures
    use ``apply_inside_out_preset`` (unbounded ones also alpha pruning).

    ``pose_refinement``: the poses will be optimised jointly, so the cap drops to one cell per pixel footprint
    (``oversample=1``, measured in :func:`image_limited_resolution`).
    """
    cfg = TrainerConfig()
    cfg.field.encoding.impl = field_impl
    if field_impl == "torch":
        cfg.grid.impl = "torch"  # the pure-PyTorch reference path end to end
    if data.unbounded or _cameras_inside(data):
        apply_inside_out_preset(cfg, data.scene_box)
    elif len(data.cameras):
        cfg.field.encoding.max_resolution = image_limited_resolution(
            data.cameras, data.scene_box, oversample=1.0 if pose_refinement else 2.0)
    if data.unbounded:
        cfg.render.alpha_thre = 1e-2  # far, contracted space: drop near-transparent samples from the gradient pass
    if background is not None:
        cfg.background = tuple(float(c) for c in background)
    elif data.format == "dtu":
        cfg.background = (0.0, 0.0, 0.0)
    return cfg


def checkpoint_extra(data, data_path: Path, downscale: int) -> dict:
    """What eval/render need later without re-reading the dataset's training split."""
    return {
        "data": str(Path(data_path).resolve()),
        "downscale": int(downscale),
        "format": data.format,
        "train_c2w": data.cameras.c2w.clone(),
        "train_intrinsics": torch.stack([data.cameras.fx, data.cameras.fy, data.cameras.cx, data.cameras.cy], -1),
        "train_size": torch.stack([data.cameras.width, data.cameras.height], -1),
        "world_transform": data.world_transform.clone(),
        "world_scale": float(data.world_scale),
    }


def build_trainer(data, cfg: TrainerConfig) -> Trainer:
    return Trainer(cfg, scene_spec(data), frame_store_from(data, seed=cfg.seed))


def _optional(obj, name: str) -> bool:
    """Whether dataclass field ``name`` of ``obj`` admits None (``X | None``)."""
    import typing

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
