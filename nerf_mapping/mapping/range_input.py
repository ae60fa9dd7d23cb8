"""Range inputs of the online mapper: depth images and LiDAR scans, buffered by stamp and matched to keyframes. No
ROS: the node converts messages (:func:`nerf_mapping.bags.depth_msg_to_array`,
:func:`nerf_mapping.bags.pointcloud_msg_to_arrays`) and calls :meth:`RangeInput.add_depth` /
:meth:`RangeInput.add_points`; the mapper's keyframe worker calls :meth:`RangeInput.for_keyframe` for every new
keyframe.

What a keyframe gets:

* **Depth** aligned to the colour camera (the common RGB-D driver output: ``aligned_depth_to_color``): the image with
  the keyframe's stamp (within ``match_tolerance_s``), resampled onto the keyframe's grid by nearest pixel after its
  depth edges were masked (:func:`nerf_mapping.training.range.depth_edge_mask`; averaging across an edge would
  invent flying pixels between the surfaces). A depth image of another size with the same aspect ratio is resampled
  the same way. A depth camera with its own CameraInfo (``set_depth_intrinsics``) that is not the colour camera is
  turned into range rays in the keyframe's camera frame instead, through the static transform between the two.
* **LiDAR returns**: the scan nearest in time to the keyframe (within ``lidar_window_s``), each point moved into the
  keyframe's camera frame through the LiDAR's static transform and the odometry at the point's own capture time
  (per-point times deskew a sweep taken while the rig moves; without them the scan's stamp), subsampled to
  ``lidar_points_per_keyframe``. Relative odometry over a fraction of a second is accurate, so the returns ride on the
  keyframe's pose from then on: its refinement moves them with it.

Everything malformed is counted by reason and dropped (the intake's counters), never raised to the caller.
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from nerf_mapping.training.frame_store import CameraRays, world_range_rays
from nerf_mapping.training.range import depth_edge_mask, depth_to_range_rays, optical_to_model


@dataclass
class RangeInputConfig:
    """How depth images and LiDAR scans are matched to keyframes."""

    match_tolerance_s: float = 0.02
    """A depth image belongs to the colour image within this many seconds of its stamp."""
    lidar_window_s: float = 0.1
    """A keyframe takes the LiDAR scan nearest to its stamp within this many seconds (a 10 Hz sweep's period)."""
    lidar_points_per_keyframe: int = 8192
    """LiDAR returns kept per keyframe (an even random subset; a sweep has ~10-100k)."""
    max_points_per_scan: int = 200_000
    """Points read from one cloud message at most (a random subset of larger clouds: bounded cost per message)."""
    depth_edge_jump: float = 0.05
    """A depth pixel whose 3x3 neighbourhood spans a jump larger than this fraction of its depth is not used."""
    buffer: int = 30
    """Depth images and scans kept for matching (the newest)."""


class RangeInput:
    def __init__(self, cfg: RangeInputConfig, intake):
        """``intake``: the mapper's :class:`~nerf_mapping.mapping.intake.Intake` (counters, odometry, static
        transforms, camera intrinsics)."""
        self.cfg = cfg
        self.intake = intake
        self.expect_depth = False
        """A depth topic is subscribed: keyframes wait (``sync.wait_s``) for their depth image."""
        self.expect_points = False
        """A point cloud topic is subscribed."""
        self.depth_intrinsics: dict | None = None
        self._depths: deque = deque(maxlen=cfg.buffer)
        self._scans: deque = deque(maxlen=cfg.buffer)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------------ inputs
    def add_depth(self, stamp_ns: int, frame_id: str, depth_m: np.ndarray) -> bool:
        """A depth image (float32 [H,W] metres, 0 = no return). Dropped (counted) when it is not a finite, 2-D,
        non-negative image or has no valid pixel."""
        d = np.asarray(depth_m)
        if d.ndim != 2 or d.size == 0 or d.dtype.kind != "f":
            self.intake.count("depth_invalid", f"depth image dropped: expected float [H,W], got {d.dtype} {d.shape}")
            return False
        if not np.isfinite(d).all() or (d < 0).any():
            self.intake.count("depth_invalid", "depth image dropped: negative or non-finite values")
            return False
        if not (d > 0).any():
            self.intake.count("depth_empty", "depth image dropped: no valid pixel (all no-return)")
            return False
        with self._lock:
            self._depths.append((int(stamp_ns), frame_id, d.astype(np.float32, copy=False)))
        self.intake.count("depth_received")
        return True

    def set_depth_intrinsics(self, intr: dict, frame_id: str = "") -> None:
        """The depth camera's own intrinsics (its CameraInfo, when it is not the colour camera's); first kept."""
        if self.depth_intrinsics is None:
            self.depth_intrinsics = {**intr, "frame_id": frame_id}

    def add_points(self, stamp_ns: int, frame_id: str, xyz: np.ndarray, times: np.ndarray | None) -> bool:
        """A LiDAR scan: points [N,3] in ``frame_id`` and per-point times relative to ``stamp_ns`` (s) or None."""
        p = np.asarray(xyz, dtype=np.float32)
        if p.ndim != 2 or p.shape[1] != 3 or len(p) == 0:
            self.intake.count("points_empty" if p.size == 0 else "points_invalid",
                              f"point cloud dropped: {p.shape} points")
            return False
        if not frame_id:
            self.intake.count("points_no_frame", "point cloud dropped: no frame_id")
            return False
        t = None if times is None else np.asarray(times, dtype=np.float64).reshape(-1)
        if t is not None and (len(t) != len(p) or not np.isfinite(t).all()):
            t = None  # the geometry is still good; deskewing is not
        with self._lock:
            self._scans.append((int(stamp_ns), frame_id, p, t))
        self.intake.count("points_received")
        return True

    def clear(self) -> None:
        with self._lock:
            self._depths.clear()
            self._scans.clear()

    # ------------------------------------------------------------------------------------------------ matching
    def depth_pending(self, stamp_ns: int) -> bool:
        """Whether a keyframe at ``stamp_ns`` should still wait for its depth image (a depth topic is subscribed, and
        no depth image at or after its stamp has arrived yet)."""
        if not self.expect_depth:
            return False
        tol = int(self.cfg.match_tolerance_s * 1e9)
        with self._lock:
            newest = self._depths[-1][0] if self._depths else None
        return newest is None or newest < stamp_ns - tol

    def for_keyframe(self, stamp_ns: int, T_odom_cam: np.ndarray, size: tuple[int, int], factor: int
                     ) -> tuple[torch.Tensor | None, CameraRays | None]:
        """The range data of a keyframe at ``stamp_ns`` with raw odometry camera pose ``T_odom_cam`` (optical), whose
        colour image is ``size`` = (W, H) at full resolution and enters the map downscaled by ``factor``: (z-depth
        [H/factor, W/factor] metres or None, range rays in its camera frame or None)."""
        depth = rays = None
        try:
            depth, rays = self._depth_for(stamp_ns, size, factor)
        except Exception as exc:  # noqa: BLE001 - a bad depth image never stops a keyframe
            self.intake.count("depth_error", f"depth image not used: {exc!r}")
        try:
            lidar = self._lidar_for(stamp_ns, T_odom_cam)
        except Exception as exc:  # noqa: BLE001
            self.intake.count("points_error", f"point cloud not used: {exc!r}")
            lidar = None
        if lidar is not None:
            rays = lidar if rays is None else CameraRays(torch.cat([rays.origins, lidar.origins]),
                                                         torch.cat([rays.directions, lidar.directions]),
                                                         torch.cat([rays.ranges, lidar.ranges]))
        return depth, rays

    def _nearest(self, items: deque, stamp_ns: int, window_s: float):
        with self._lock:
            if not items:
                return None
            best = min(items, key=lambda it: abs(it[0] - stamp_ns))
        return best if abs(best[0] - stamp_ns) <= window_s * 1e9 else None

    def _depth_for(self, stamp_ns: int, size: tuple[int, int], factor: int):
        if not self.expect_depth and not self._depths:
            return None, None
        item = self._nearest(self._depths, stamp_ns, self.cfg.match_tolerance_s)
        if item is None:
            if self.expect_depth:
                self.intake.count("depth_unmatched", "keyframe without depth: no depth image within "
                                                     f"{self.cfg.match_tolerance_s} s of its stamp")
            return None, None
        _, frame_id, d = item
        w, h = size
        di = self.depth_intrinsics
        own_camera = di is not None and (frame_id != self.intake.camera_frame or
                                         (di["width"], di["height"]) != (w, h))
        if own_camera:
            T = self.intake.static_transform(self.intake.camera_frame, frame_id) if frame_id else np.eye(4)
            if T is None:
                self.intake.count("depth_no_tf", f"depth image not used: no static transform "
                                                 f"{self.intake.camera_frame} -> {frame_id}")
                return None, None
            if (d.shape[1], d.shape[0]) != (di["width"], di["height"]):
                self.intake.count("depth_size_mismatch", f"depth image {d.shape[1]}x{d.shape[0]} != its camera info "
                                                         f"{di['width']}x{di['height']}")
                return None, None
            dt = torch.from_numpy(d * depth_edge_mask(torch.from_numpy(d), self.cfg.depth_edge_jump).numpy())
            return None, depth_to_range_rays(dt, di["fx"], di["fy"], di["cx"], di["cy"], torch.from_numpy(T).float(),
                                             max_rays=self.cfg.lidar_points_per_keyframe)
        dh, dw = d.shape
        if abs(dw / dh - w / h) > 0.01:
            self.intake.count("depth_size_mismatch", f"depth image {dw}x{dh} is not aligned to the {w}x{h} colour "
                                                     "image (give its own camera info topic)")
            return None, None
        dt = torch.from_numpy(d)
        dt = dt * depth_edge_mask(dt, self.cfg.depth_edge_jump)
        hh, ww = h // factor, w // factor  # the keyframe's grid (downscale_image crops the remainder)
        ys = ((torch.arange(hh) + 0.5) * factor * dh / h).long().clamp_max(dh - 1)
        xs = ((torch.arange(ww) + 0.5) * factor * dw / w).long().clamp_max(dw - 1)
        out = dt[ys][:, xs].contiguous()
        if not bool((out > 0).any()):
            self.intake.count("depth_empty", "depth image not used: no valid pixel after edge masking")
            return None, None
        return out, None

    def _lidar_for(self, stamp_ns: int, T_odom_cam: np.ndarray) -> CameraRays | None:
        if not self._scans:
            return None
        item = self._nearest(self._scans, stamp_ns, self.cfg.lidar_window_s)
        if item is None:
            self.intake.count("points_unmatched")
            return None
        scan_ns, frame_id, p, t = item
        T_base_lidar = self.intake.static_transform(self.intake.cfg.base_frame, frame_id)
        if T_base_lidar is None:
            self.intake.count("points_no_tf", f"point cloud not used: no static transform "
                                              f"{self.intake.cfg.base_frame} -> {frame_id}")
            return None
        rng = np.random.default_rng(scan_ns & 0xFFFFFFFF)
        if len(p) > self.cfg.lidar_points_per_keyframe:
            sel = np.sort(rng.choice(len(p), self.cfg.lidar_points_per_keyframe, replace=False))
            p = p[sel]
            t = None if t is None else t[sel]
        # per-point capture times, in a few bins (poses vary smoothly over a sweep)
        stamps = np.full(len(p), scan_ns, dtype=np.int64) if t is None else scan_ns + np.round(t * 1e9).astype(np.int64)
        edges = np.linspace(stamps.min(), stamps.max() + 1, 9)
        T_cam_odom = np.linalg.inv(T_odom_cam)
        o_out = np.empty_like(p, dtype=np.float64)
        p_out = np.empty_like(p, dtype=np.float64)
        keep = np.zeros(len(p), dtype=bool)
        for k in range(8):
            m = (stamps >= edges[k]) & (stamps < edges[k + 1])
            if not m.any():
                continue
            mid = int(np.median(stamps[m]))
            T_odom_base, _ = self.intake.odom.pose_at(mid, count=False)
            if T_odom_base is None:
                T_odom_base, _ = self.intake.odom.pose_at(scan_ns, count=False)
            if T_odom_base is None:
                continue
            T = T_cam_odom @ T_odom_base @ T_base_lidar  # lidar (at that time) -> keyframe camera (optical)
            p_out[m] = p[m] @ T[:3, :3].T + T[:3, 3]
            o_out[m] = T[:3, 3]
            keep |= m
        if not keep.any():
            self.intake.count("points_no_pose", "point cloud not used: no odometry at its stamp")
            return None
        o = optical_to_model(torch.from_numpy(o_out[keep]).float())
        q = optical_to_model(torch.from_numpy(p_out[keep]).float())
        return CameraRays.from_points(o, q)


def range_points_world(camera, depth: torch.Tensor | None, rays: CameraRays | None, max_points: int = 4096
                       ) -> np.ndarray:
    """World points [N,3] of a keyframe's range data (z-depth on the grid of ``camera``, a one-camera ``Cameras``
    whose c2w places it, and range rays in its camera frame), an even subset of at most ``max_points`` of each."""
    o, d, r = world_range_rays(camera, depth, rays, max_points)
    return (o + d * r[:, None]).double().numpy()
