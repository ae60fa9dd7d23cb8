"""Odometry drift bookkeeping for online pose refinement. Pure numpy (no ROS); trajectory errors (ATE) are in
:mod:`nerf_mapping.evaluation.trajectory`.

Frames: ``odom`` is the odometry's (drifting) frame, ``map`` the model's world frame. Keyframe poses are 4x4
camera (or body) poses; the mapper converts them to model c2w (and back) with :mod:`nerf_mapping.geometry.frames`, never here.

The drift is the map->odom transform ``T_map_odom``. A keyframe whose raw odometry camera pose is ``T_odom_cam`` is
inserted into the map at ``T_map_odom_est @ T_odom_cam`` (the current best estimate applied); pose refinement then
learns a correction and the keyframe's refined pose ``T_map_cam`` implies ``T_map_odom = T_map_cam @ inv(T_odom_cam)``.
The current best estimate is the one implied by the most recent keyframe whose refined pose is known.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

from nerf_mapping.geometry.rigid import as4, inv_pose


def implied_map_odom(T_map_cam_refined, T_odom_cam_raw) -> np.ndarray:
    """map->odom transform implied by one keyframe (or a batch [..., 4, 4]): refined @ inv(raw odometry)."""
    return as4(T_map_cam_refined) @ inv_pose(T_odom_cam_raw)


def apply_drift(T_map_odom, T_odom_x) -> np.ndarray:
    """Pose(s) in the odometry frame -> the map frame under the drift estimate ``T_map_odom``."""
    return as4(T_map_odom) @ as4(T_odom_x)


def drift_estimate(corrections: Mapping[int, np.ndarray], order: Iterable[int]) -> np.ndarray:
    """Current best T_map_odom: the correction implied by the last keyframe id in ``order`` (time order) that has one
    in ``corrections``; identity when none has (no keyframe yet, or refinement off)."""
    last = None
    for fid in order:
        if fid in corrections:
            last = fid
    return np.eye(4) if last is None else as4(corrections[last]).copy()


def refined_path(history: Sequence[tuple[int, int, np.ndarray]], corrections: Mapping[int, np.ndarray],
                 fallback: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Keyframe path in the map frame: [(stamp, T_map_base)] for ``history`` [(frame id, stamp, T_odom_base)], each
    pose moved by its own keyframe's implied map->odom (``fallback``, the current estimate, when unknown)."""
    fb = as4(fallback)
    return [(s, as4(corrections.get(fid, fb)) @ as4(T)) for fid, s, T in history]
