"""Simulated range sensors of the demo rig: a depth camera aligned with the colour camera and a spinning LiDAR.

Both start from exact ray hits against the ground-truth mesh (the Renderer's clean z-depth; its open3d
RaycastingScene for the LiDAR's rays) and add a sensor model drawn from a seeded generator, so one config and seed
give the same measurements.

Depth camera (Kinect-like): same intrinsics, pose and stamps as the colour camera; z-depth along the optical axis.

- axial noise ``sigma(z) = sigma_base + sigma_quad * (z - sigma_offset)^2`` metres (Nguyen, Izadi and Lovell 2012,
  "Modeling Kinect sensor noise for improved 3D reconstruction and tracking": 0.0012 + 0.0019 (z - 0.4)^2), white
  per pixel and frame, then quantised to millimetres;
- holes at depth edges: a pixel whose clean depth jumps with respect to its neighbours reads 0 (both sides of a
  discontinuity: the shadow / flying pixels of a structured-light or time-of-flight camera), as does a pixel next to
  a miss. A jump is measured against the plane through the neighbours: along the image rows and columns the inverse
  depth of any plane is affine in the pixel coordinates, so its second difference across the pixel is zero on a
  plane, whatever its slant; a pixel is at an edge when that second difference exceeds ``edge_threshold_rel / z``
  (the neighbours differ from what a plane predicts by more than that fraction of the depth). Slanted surfaces seen
  at grazing angles therefore keep their readings at any image resolution;
- random dropouts: each pixel reads 0 with probability ``dropout``;
- range gate: a measured depth outside ``[min_range, max_range]`` reads 0.

Spinning LiDAR (Velodyne VLP-16-like), mounted on base_link by ``LidarConfig.t_base_lidar()``:

- ``beams`` lasers at elevations evenly spaced over ``vertical_fov_deg`` (ring 0 = lowest), fired together once per
  column; ``round(360 / horizontal_step_deg)`` columns per revolution at ``rate_hz``; the head turns clockwise seen
  from above (azimuth decreasing, REP 103 sensor frame: x forward, y left, z up), the sweep starting at the rear
  (azimuth +180 degrees);
- column ``j`` of a sweep fires at ``time = j / (columns * rate_hz)`` seconds after the sweep start (the message's
  header stamp) from the ground-truth pose of the sensor at that instant: the rig moves during a sweep and each point
  is expressed in the sensor frame *at its own capture time* (what a driver without motion compensation publishes);
- a point per hit at ``range + N(0, range_noise^2)`` along the beam; misses (no surface within ``max_range``), hits
  closer than ``min_range`` and dropouts (probability ``dropout`` each) are omitted: an unorganised, dense cloud whose
  points come in firing order (column by column, ring by ring within a column).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from nerf_mapping.geometry.rigid import make_pose, so3_exp


# ---------------------------------------------------------------------------------------------------- depth camera
@dataclass
class DepthCameraConfig:
    """The simulated depth camera (aligned with the colour camera: same intrinsics, pose and stamps)."""

    enabled: bool = True
    """Simulate it (``sensor_depth/`` PNGs, the ``/camera/depth/image_raw`` topic)."""
    min_range: float = 0.3
    """Closest measurable depth (m); nearer pixels read 0."""
    max_range: float = 8.0
    """Farthest measurable depth (m); farther pixels read 0."""
    sigma_base: float = 0.0012
    """Axial noise std at ``sigma_offset`` (m)."""
    sigma_quad: float = 0.0019
    """Growth of the axial noise std with the squared range (m per m^2)."""
    sigma_offset: float = 0.4
    """Range (m) where the axial noise std is smallest."""
    edge_threshold_rel: float = 0.05
    """A pixel whose neighbours (along its row or column) differ from the plane through them by more than this
    fraction of its depth is a depth edge and reads 0 (see :func:`depth_edges`)."""
    dropout: float = 0.005
    """Probability that any pixel reads 0."""

    def validate(self) -> None:
        if not 0 < self.min_range < self.max_range:
            raise ValueError("depth camera: need 0 < min_range < max_range")
        if min(self.sigma_base, self.sigma_quad, self.edge_threshold_rel) < 0:
            raise ValueError("depth camera: noise parameters and edge threshold must be >= 0")
        if not 0 <= self.dropout < 1:
            raise ValueError("depth camera: dropout must be in [0, 1)")


def depth_sigma(z: np.ndarray, cfg: DepthCameraConfig) -> np.ndarray:
    """Axial noise std (m) of the depth camera at z-depth ``z`` (m), any shape."""
    return cfg.sigma_base + cfg.sigma_quad * (np.asarray(z) - cfg.sigma_offset) ** 2


def depth_edges(z: np.ndarray, threshold_rel: float) -> np.ndarray:
    """bool [H,W]: depth-edge pixels of the z-depth image ``z`` [H,W] (0 = miss): those where
    ``|1/z[left] - 2/z + 1/z[right]| * z`` or the same along the column exceeds ``threshold_rel`` (zero on any
    plane: inverse depth is affine in pixel coordinates there), and those next to a miss. Pixels on the image border
    are judged along the border only (their outer neighbour is unknown)."""
    z = np.asarray(z, np.float32)
    miss = z <= 0
    inv = np.where(miss, 0.0, 1.0 / np.where(miss, 1.0, z)).astype(np.float32)
    d2 = np.zeros_like(z)
    d2[1:-1, :] = np.abs(inv[:-2, :] - 2 * inv[1:-1, :] + inv[2:, :])
    d2[:, 1:-1] = np.maximum(d2[:, 1:-1], np.abs(inv[:, :-2] - 2 * inv[:, 1:-1] + inv[:, 2:]))
    pm = np.pad(miss, 1, mode="edge")
    near_miss = pm[:-2, 1:-1] | pm[2:, 1:-1] | pm[1:-1, :-2] | pm[1:-1, 2:]
    return ~miss & ((d2 * z > threshold_rel) | near_miss)


def simulate_depth(z: np.ndarray, cfg: DepthCameraConfig, rng: np.random.Generator) -> np.ndarray:
    """The depth camera's reading of the clean z-depth image ``z`` [H,W] (m, 0 = miss): float32 [H,W] m, 0 = no
    reading (see the module docstring for the model). Draws H*W normals then H*W uniforms from ``rng``."""
    z = np.asarray(z, np.float32)
    noise = rng.standard_normal(z.shape).astype(np.float32)
    drop = rng.random(z.shape) < cfg.dropout
    meas = z + noise * depth_sigma(z, cfg).astype(np.float32)
    ok = (z > 0) & (meas >= cfg.min_range) & (meas <= cfg.max_range) & ~drop
    ok &= ~depth_edges(z, cfg.edge_threshold_rel)
    return np.where(ok, meas, 0.0).astype(np.float32)


def depth_to_millimetres(depth: np.ndarray) -> np.ndarray:
    """z-depth in metres (0 = none) -> uint16 millimetres (rounded, clipped to 65535; 0 stays 0)."""
    return np.clip(np.round(np.asarray(depth, np.float64) * 1000.0), 0, 65535).astype(np.uint16)


# ---------------------------------------------------------------------------------------------------------- LiDAR
@dataclass
class LidarConfig:
    """The simulated spinning LiDAR (a VLP-16-like head on the rig)."""

    enabled: bool = True
    """Simulate it (``lidar.npz``, the ``/lidar/points`` topic, the base_link -> lidar static transform)."""
    beams: int = 16
    """Lasers (rings), evenly spaced in elevation over ``vertical_fov_deg``."""
    vertical_fov_deg: tuple[float, float] = (-15.0, 15.0)
    """Elevation of the lowest and of the highest beam (degrees, positive up)."""
    rate_hz: float = 10.0
    """Revolutions per second: one PointCloud2 per revolution."""
    horizontal_step_deg: float = 0.4
    """Azimuth between two firings (360 / step columns per revolution)."""
    range_noise: float = 0.02
    """Range noise std along the beam (m)."""
    dropout: float = 0.03
    """Probability that a return is lost."""
    min_range: float = 0.4
    """Returns nearer than this (m) are dropped."""
    max_range: float = 30.0
    """Farthest return (m): beyond it the beam is a miss."""
    mount_xyz: tuple[float, float, float] = (0.0, 0.0, 0.15)
    """Position of the ``lidar`` frame in base_link (m): 15 cm above the base by default."""
    mount_rpy_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Roll, pitch, yaw of the ``lidar`` frame in base_link (degrees, R = Rz(yaw) Ry(pitch) Rx(roll)): level and
    x forward by default."""
    time_offset_s: float = 0.025
    """The first sweep starts this long after the first image (the sensors are not synchronised)."""

    def validate(self) -> None:
        lo, hi = self.vertical_fov_deg
        if self.beams < 1 or not -90 <= lo <= hi <= 90 or (self.beams > 1 and lo == hi):
            raise ValueError("lidar: need beams >= 1 and -90 <= vertical_fov_deg[0] < vertical_fov_deg[1] <= 90")
        if self.rate_hz <= 0 or not 0 < self.horizontal_step_deg <= 90:
            raise ValueError("lidar: rate_hz must be > 0 and horizontal_step_deg in (0, 90]")
        if not 0 <= self.min_range < self.max_range:
            raise ValueError("lidar: need 0 <= min_range < max_range")
        if self.range_noise < 0 or not 0 <= self.dropout < 1 or self.time_offset_s < 0:
            raise ValueError("lidar: range_noise and time_offset_s must be >= 0, dropout in [0, 1)")

    @property
    def columns(self) -> int:
        """Firings per revolution."""
        return max(int(round(360.0 / self.horizontal_step_deg)), 1)

    @property
    def period_s(self) -> float:
        return 1.0 / self.rate_hz

    def elevations(self) -> np.ndarray:
        """[beams] elevation of each ring (rad), ring 0 the lowest."""
        return np.deg2rad(np.linspace(*self.vertical_fov_deg, self.beams))

    def azimuths(self) -> np.ndarray:
        """[columns] azimuth of each firing (rad): from +pi (the rear) decreasing (clockwise seen from above)."""
        return np.pi - np.arange(self.columns) * (2 * np.pi / self.columns)

    def column_times(self) -> np.ndarray:
        """[columns] firing time of each column, seconds after the sweep start."""
        return np.arange(self.columns) / (self.columns * self.rate_hz)

    def directions(self) -> np.ndarray:
        """[columns, beams, 3] unit beam directions in the lidar frame."""
        el, az = self.elevations()[None, :], self.azimuths()[:, None]
        return np.stack(np.broadcast_arrays(np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)), -1)

    def t_base_lidar(self) -> np.ndarray:
        """[4,4] pose of the ``lidar`` frame in base_link."""
        r, p, y = np.deg2rad(self.mount_rpy_deg)
        rot = so3_exp([0.0, 0.0, y]) @ so3_exp([0.0, p, 0.0]) @ so3_exp([r, 0.0, 0.0])
        return make_pose(rot, np.asarray(self.mount_xyz, float))


def sweep_stamps(first_image_ns: int, last_image_ns: int, cfg: LidarConfig) -> np.ndarray:
    """[S] int64 sweep start stamps: every ``1 / rate_hz`` from ``time_offset_s`` after the first image, for the
    sweeps that end by the last image (so ground-truth and odometry poses cover every point's time)."""
    first = int(first_image_ns) + int(round(cfg.time_offset_s * 1e9))
    period = 1e9 / cfg.rate_hz
    n = max(int(np.floor((int(last_image_ns) - first) / period + 1e-9)), 0)  # sweep k ends at first + (k+1) period
    return first + np.round(np.arange(n) * period).astype(np.int64)


@dataclass
class LidarScans:
    """Simulated sweeps, concatenated: the points of sweep ``s`` are rows ``offsets[s]:offsets[s + 1]``.
    Saved as ``lidar.npz`` with these names (see :meth:`save`)."""

    stamps_ns: np.ndarray
    """[S] int64 sweep start (= the PointCloud2 header stamp)."""
    offsets: np.ndarray
    """[S+1] int64 first row of each sweep, then the total."""
    points: np.ndarray
    """[N,3] float32 x, y, z in the lidar frame at the point's own capture time (m)."""
    times: np.ndarray
    """[N] float32 capture time, seconds after the sweep's stamp."""
    rings: np.ndarray
    """[N] uint8 beam index (0 = lowest elevation)."""
    t_base_lidar: np.ndarray
    """[4,4] static pose of the lidar frame in base_link."""

    def __len__(self) -> int:
        return len(self.stamps_ns)

    def scan(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        """(points [n,3], times [n]) of sweep ``s``."""
        a, b = int(self.offsets[s]), int(self.offsets[s + 1])
        return self.points[a:b], self.times[a:b]

    def save(self, path: Path) -> None:
        # uncompressed: float noise does not compress, and zlib would cost seconds
        np.savez(path, stamps_ns=self.stamps_ns, offsets=self.offsets, points=self.points, times=self.times,
                 rings=self.rings, t_base_lidar=self.t_base_lidar)

    @staticmethod
    def load(path: Path) -> "LidarScans":
        with np.load(path) as d:
            return LidarScans(**{k: d[k] for k in ("stamps_ns", "offsets", "points", "times", "rings",
                                                   "t_base_lidar")})


def simulate_lidar(
    cast: Callable[[np.ndarray], np.ndarray],
    world_lidar_at: Callable[[int, np.ndarray], np.ndarray],
    stamps_ns: np.ndarray,
    cfg: LidarConfig,
    rng: np.random.Generator,
) -> LidarScans:
    """Sweeps starting at ``stamps_ns`` [S] (see the module docstring for the model).

    ``cast(rays [n,6] float32: origin, unit direction) -> [n]`` hit distances (inf = miss);
    ``world_lidar_at(s, times [C]) -> [C,4,4]``: ground-truth pose of the lidar frame in the world at ``times``
    seconds after the stamp of sweep ``s``. Draws columns*beams normals then as many uniforms per sweep."""
    d_lidar = cfg.directions()  # [C,B,3]
    c, b = d_lidar.shape[:2]
    t_col = cfg.column_times()
    rings = np.broadcast_to(np.arange(b, dtype=np.uint8), (c, b)).reshape(-1)
    times = np.broadcast_to(t_col[:, None].astype(np.float32), (c, b)).reshape(-1)
    d_flat = d_lidar.reshape(-1, 3).astype(np.float32)
    pts, tms, rgs, counts = [], [], [], []
    for s in range(len(stamps_ns)):
        pose = world_lidar_at(s, t_col)  # [C,4,4]
        rays = np.empty((c, b, 6), np.float32)
        rays[..., :3] = pose[:, None, :3, 3]
        rays[..., 3:] = np.einsum("cij,cbj->cbi", pose[:, :3, :3], d_lidar)
        r = np.asarray(cast(rays.reshape(-1, 6)), np.float32).reshape(-1)
        noise = rng.standard_normal(r.shape).astype(np.float32)
        drop = rng.random(r.shape) < cfg.dropout
        hit = np.isfinite(r) & (r <= cfg.max_range)
        meas = np.where(hit, r, 0.0) + noise * np.float32(cfg.range_noise)
        keep = hit & (meas >= max(cfg.min_range, 1e-3)) & ~drop
        pts.append(meas[keep, None] * d_flat[keep])
        tms.append(times[keep])
        rgs.append(rings[keep])
        counts.append(int(keep.sum()))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    cat = (lambda xs, shape, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(shape, dt))  # noqa: E731
    return LidarScans(stamps_ns=np.asarray(stamps_ns, np.int64), offsets=offsets,
                      points=cat(pts, (0, 3), np.float32), times=cat(tms, (0,), np.float32),
                      rings=cat(rgs, (0,), np.uint8), t_base_lidar=cfg.t_base_lidar())
