"""Offline training on a dataset: SceneData -> FrameStore + Trainer (the config comes from
:func:`nerf_mapping.config.presets.offline_config`)."""
from __future__ import annotations

from pathlib import Path

import torch

from nerf_mapping.training.frame_store import FrameStore
from nerf_mapping.training.trainer import SceneSpec, Trainer, TrainerConfig


def scene_spec(data) -> SceneSpec:
    return SceneSpec(scene_box=data.scene_box.tolist(), unbounded=bool(data.unbounded),
                     near=float(data.near), far=float(data.far), world_scale=float(data.world_scale))


def frame_store_from(data, seed: int = 0) -> FrameStore:
    fs = FrameStore(seed=seed)
    for i, img in enumerate(data.images):
        fs.add(img, data.cameras[i : i + 1], depth=data.depths[i] if data.depths is not None else None,
               mask=data.masks[i] if data.masks is not None else None)
    return fs


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
