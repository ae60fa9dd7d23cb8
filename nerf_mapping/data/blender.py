"""Blender / NeRF-synthetic parser (``transforms_{train,val,test}.json``, ``camera_angle_x``, RGBA images).

The scene is bounded: box [-1.5, 1.5]^3, near 2, far 6 (the original NeRF values), identity world transform.
RGBA is composited on ``background``. "all" concatenates the splits that exist in train, val, test order, and
``frame_indices`` index into that concatenation (so test frame i of lego is index 100 + i when val is absent).
A missing ``transforms_val.json`` is only an error when split="val" is requested.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..cameras import Cameras
from .base import (
    DataError,
    FrameRecord,
    SceneData,
    check_downscale,
    check_split,
    load_frames,
    parse_pose,
    resolve_image,
    subsample,
)
from .nerfstudio import _number, get_frames, read_json

BLENDER_SPLITS = ("train", "val", "test")
SCENE_BOX = ((-1.5, -1.5, -1.5), (1.5, 1.5, 1.5))
NEAR, FAR = 2.0, 6.0


def load_blender(
    path: Path | str,
    split: str = "train",
    downscale: int = 1,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    test_every: int = 8,  # unused: Blender has explicit splits (kept for a uniform signature)
    max_frames: int | None = None,
    num_workers: int | None = None,
) -> SceneData:
    check_split(split)
    downscale = check_downscale(downscale)
    data_dir = Path(path)
    if data_dir.suffix == ".json":
        data_dir = data_dir.parent
    available = [s for s in BLENDER_SPLITS if (data_dir / f"transforms_{s}.json").is_file()]
    if not available:
        raise DataError(f"{data_dir}: no transforms_{{train,val,test}}.json found")
    if split != "all" and split not in available:
        raise DataError(f"transforms_{split}.json: file not found in {data_dir} (split '{split}' requested; "
                        f"available: {', '.join(available)})")
    wanted = available if split == "all" else [split]

    # frames of every available split, to give each frame its index in the full concatenated dataset
    entries = []  # (global index, split, frame, label, camera_angle_x)
    offset = 0
    for s in available:
        name = f"transforms_{s}.json"
        meta = read_json(data_dir / name)
        frames = get_frames(meta, name)
        if s in wanted:
            if "camera_angle_x" not in meta:
                raise DataError(f"{name}: camera_angle_x: missing")
            angle = _number(meta["camera_angle_x"], f"{name}: camera_angle_x")
            if not 0 < angle < math.pi:
                raise DataError(f"{name}: camera_angle_x: must be in (0, pi) radians, got {angle}")
            for i, fr in enumerate(frames):
                entries.append((offset + i, fr, f"{name}: frames[{i}]", angle))
        offset += len(frames)

    entries = [entries[i] for i in subsample(range(len(entries)), max_frames)]
    poses = np.stack([parse_pose(fr["transform_matrix"], f"{lab}.transform_matrix") for _, fr, lab, _ in entries])
    records = [FrameRecord(resolve_image(data_dir, str(fr["file_path"]), f"{lab}.file_path"), lab)
               for _, fr, lab, _ in entries]
    loaded = load_frames(records, downscale, background, num_workers=num_workers)

    fx, fy, cx, cy = [], [], [], []
    for (_, _, _, angle), lf in zip(entries, loaded):
        w_full, h_full = lf.full_size
        f_full = 0.5 * w_full / math.tan(0.5 * angle)  # square pixels: the same focal in y
        sx, sy = lf.scale_xy
        fx.append(f_full * sx), fy.append(f_full * sy)
        cx.append(0.5 * w_full * sx), cy.append(0.5 * h_full * sy)
    cams = Cameras.create(
        c2w=torch.from_numpy(poses).float(),
        fx=fx, fy=fy, cx=cx, cy=cy,
        width=[lf.image.shape[1] for lf in loaded],
        height=[lf.image.shape[0] for lf in loaded],
        model="PINHOLE",
    )
    return SceneData(
        cameras=cams,
        images=[lf.image for lf in loaded],
        image_paths=[r.image for r in records],
        frame_indices=[e[0] for e in entries],
        masks=None,
        depths=None,
        scene_box=torch.tensor(SCENE_BOX, dtype=torch.float32),
        unbounded=False,
        near=NEAR,
        far=FAR,
        world_transform=torch.eye(3, 4),
        world_scale=1.0,
        format="blender",
        metadata={"splits": available, "downscale": downscale, "background": tuple(float(b) for b in background)},
    )

