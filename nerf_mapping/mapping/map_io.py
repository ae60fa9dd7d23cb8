"""The online map file: a trainer checkpoint (field, occupancy grid, pose corrections and drift spline, optimiser
states, step count) plus the keyframes that trained it, so a map reloads into a mapper that keeps training.

One file, written atomically by :meth:`Trainer.save`, read with ``torch.load(weights_only=True)``. Its ``extra``
holds, per live keyframe (in frame-store order): ``keyframe_ids`` (the frame ids at save time, which index the pose
parameters), ``keyframe_stamps_ns``, ``keyframe_odom_base`` / ``keyframe_odom_cam`` (raw odometry body and camera
poses, 4x4 float64), ``keyframe_c2w`` (model c2w in the frame store: odometry pose with the drift estimate applied at
insertion), ``keyframe_intrinsics`` ([fx, fy, cx, cy, width, height, model]), ``keyframe_distortion`` and
``keyframe_images`` (uint8 training-resolution images), and the frame names ``map_frame`` / ``odom_frame``.
Loading renumbers the frames 0..K-1 and selects their pose parameters accordingly.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nerf_mapping.cameras import Cameras
from nerf_mapping.geometry import model_c2w_to_optical_pose
from nerf_mapping.mapping.keyframes import Keyframe
from nerf_mapping.pose import drift
from nerf_mapping.training.frame_store import FrameStore
from nerf_mapping.training.trainer import Trainer

MAP_SUFFIX = ".pt"


def save_map(path: Path, trainer: Trainer, keyframes: dict[int, Keyframe], meta: dict | None = None) -> int:
    """Write ``trainer`` and its live keyframes (``keyframes``: frame id -> bookkeeping) to ``path`` atomically;
    returns the step saved."""
    frames = trainer.frames
    ids = frames.frame_ids()
    extra = dict(meta or {})
    if ids:
        cams = [frames.camera(i) for i in ids]
        extra["keyframe_ids"] = torch.tensor(ids, dtype=torch.int64)
        extra["keyframe_stamps_ns"] = torch.tensor([keyframes[i].stamp_ns if i in keyframes else 0 for i in ids],
                                                   dtype=torch.int64)
        extra["keyframe_odom_base"] = torch.tensor(np.stack([keyframes[i].T_odom_base if i in keyframes else np.eye(4)
                                                             for i in ids]), dtype=torch.float64)
        # raw odometry camera poses (the frame store's c2w also holds the drift correction applied at insertion)
        extra["keyframe_odom_cam"] = torch.tensor(np.stack(
            [keyframes[i].T_odom_cam if i in keyframes else model_c2w_to_optical_pose(c.c2w[0].numpy())
             for i, c in zip(ids, cams)]), dtype=torch.float64)
        extra["keyframe_c2w"] = torch.cat([c.c2w for c in cams])
        extra["keyframe_intrinsics"] = torch.stack(
            [torch.cat([c.fx, c.fy, c.cx, c.cy, c.width.float(), c.height.float(), c.model.float()]) for c in cams])
        extra["keyframe_distortion"] = torch.cat([c.distortion for c in cams])
        extra["keyframe_images"] = [frames.image(i) for i in ids]
    return trainer.save(path, extra=extra)


def load_map(path: Path, capacity: int | None = None) -> tuple[Trainer, dict[int, Keyframe]]:
    """Read a map file: (trainer with its keyframes in a new frame store of ``capacity``, frame id -> Keyframe)."""
    st = torch.load(path, map_location="cpu", weights_only=True)  # validated again by Trainer.load
    extra = st.get("extra", {}) if isinstance(st, dict) else {}
    frames = FrameStore(capacity=capacity)
    old_ids: list[int] = []
    info: dict[int, Keyframe] = {}
    if "keyframe_ids" in extra:
        for j, old in enumerate(extra["keyframe_ids"].tolist()):
            k = extra["keyframe_intrinsics"][j]
            cam = Cameras.create(extra["keyframe_c2w"][j], k[0], k[1], k[2], k[3], int(k[4]), int(k[5]),
                                 extra["keyframe_distortion"][j], int(k[6]))
            stamp_ns = int(extra["keyframe_stamps_ns"][j])
            fid = frames.add(extra["keyframe_images"][j], cam, stamp=stamp_ns * 1e-9 if stamp_ns else None)
            old_ids.append(int(old))
            T_map_cam = model_c2w_to_optical_pose(extra["keyframe_c2w"][j].double().numpy())
            # maps saved before drift-corrected insertion: the stored pose is the raw odometry pose
            T_odom_cam = extra["keyframe_odom_cam"][j].numpy() if "keyframe_odom_cam" in extra else T_map_cam
            info[fid] = Keyframe(stamp_ns, extra["keyframe_odom_base"][j].numpy(), T_odom_cam,
                                 drift.implied_map_odom(T_map_cam, T_odom_cam))
    tr = Trainer.load(path, frames=frames)
    if old_ids and tr.pose.params.shape[0] > max(old_ids):
        tr.pose.select(old_ids)  # params, preconditioners and their flags, renumbered like the frame store
        tr.pose.rebuild_optimizer()
    return tr, info
