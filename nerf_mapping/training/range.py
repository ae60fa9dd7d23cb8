"""Range supervision: depth images and LiDAR returns shape the density field, and carve the occupancy grid.

A depth camera or a LiDAR measures, per ray, the distance ``z`` to the first surface. Two uses, both here:

* **A loss on the ray-termination distribution** (:func:`line_of_sight_loss`), after the line-of-sight prior of
  Urban Radiance Fields (Rematas et al., CVPR 2022, eq. 8-10) and the ray-distribution loss of DS-NeRF (Deng et
  al., CVPR 2022, eq. 7). A ray rendered with weights ``w_i`` over intervals ``[t0_i, t1_i]`` should (a) put no
  weight in front of the surface (free space: the camera saw through it) and (b) terminate within the sensor's noise
  band around ``z``. We take (a) as URF's empty-space term in its L1 form, the weight that terminates more than
  ``band`` in front of ``z`` (= 1 - transmittance there: the probability of an occluder that is not there), and (b)
  as DS-NeRF's cross-entropy between the target distribution, a Gaussian N(z, sigma(z)^2) integrated over each
  interval, and the rendered weights. Why this pair: the L1 free-space term keeps a useful gradient on a faint haze
  (URF's squared weights vanish for the many small weights of an untrained field), and the cross-entropy pulls
  weight to the surface however little is there yet (its gradient is ``K_i / w_i``), where an expected-depth loss
  would be satisfied by a bimodal haze whose mean falls on ``z``. No loss behind the band: the surface hides it.
  ``sigma(z) = sigma0 + sigma_quadratic * z^2`` (metres) models a structured-light or time-of-flight camera whose
  noise grows with the square of the range (Nguyen et al., 3DIMPVT 2012, for the Kinect); a LiDAR's is constant
  (``lidar_sigma_m``). It is floored at the marching step: the field cannot be sharper than its samples.
* **Free space and occupancy from range** (:meth:`OccupancyGrid.carve`, called here for every new range frame before
  its next training step): cells a ray crossed well before its return are free, cells at returns are occupied, from
  the first keyframe on, so training and rendering skip the space between the camera and the surfaces before the
  field has learnt that it is empty (the haze that cost RGB-only maps 70-145 samples per ray).

Where colour and depth share a pixel (an aligned depth camera) the range loss rides on the colour batch's rays; LiDAR
returns (no colour) are extra rays (:meth:`RangeSupervision.extra_rays`) rendered beside them with the same pose
corrections (a LiDAR ray's origin moves with its keyframe's refined pose). Depth images that do not sit on the colour
grid (their own camera) are stored as range rays too (:func:`depth_to_range_rays`).

Robustness to real captures (7-Scenes: colour not registered to depth, holes): depth edges are masked before use
(:func:`depth_edge_mask`: a pixel whose neighbourhood spans a depth jump belongs to neither surface), and each ray's
loss is capped (``max_ray_loss``), so a return that disagrees with the colour the pixel shows cannot dominate a step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nerf_mapping.cameras import z_depth_to_distance
from nerf_mapping.extension import StepContext, TrainerExtension
from nerf_mapping.training.frame_store import CameraRays


@dataclass
class RangeConfig:
    """Range supervision (depth images, LiDAR): active when keyframes carry range data and ``enabled``."""

    enabled: bool = True
    """Use range data where frames carry it (depth images, LiDAR returns); off: RGB-only training on the same data."""
    free_space_mult: float = 0.1
    """Weight of the free-space term (the weight a ray puts more than the noise band in front of its return)."""
    termination_mult: float = 0.05
    """Weight of the termination term (cross-entropy of the rendered weights against N(z, sigma^2))."""
    sigma0_m: float = 0.005
    """Depth camera noise at zero range (metres): sigma(z) = sigma0_m + sigma_quadratic * z^2."""
    sigma_quadratic: float = 0.0025
    """Growth of the depth camera's noise with the square of the range (1/m): a Kinect-like camera has sigma ~1 cm
    at 1.5 m and ~3 cm at 3 m."""
    lidar_sigma_m: float = 0.02
    """LiDAR range noise (metres), constant with range."""
    band_sigmas: float = 3.0
    """Half width of the noise band around a return, in sigmas: weight in front of it is free-space weight."""
    max_ray_loss: float = 5.0
    """Scale of the robust cap of one ray's termination loss, c log(1 + ce / c) (a return that disagrees with what
    the pixel shows, e.g. colour and depth not registered at an edge, must not dominate the step)."""
    lidar_rays_fraction: float = 0.25
    """LiDAR rays rendered per step, as a fraction of the step's pixel rays (they carry no colour)."""
    carve: bool = True
    """Carve the occupancy grid from every new range frame (free space before returns, occupied cells at them)."""
    carve_rays_per_frame: int = 1024
    """Rays of a frame used for carving (an even subset): a 320x240 depth image would cost 77k rays per keyframe, and
    overlapping keyframes fill in the cells one frame's subset misses."""
    hit_rays_per_frame: int = 32768
    """Returns of a frame marked as occupied cells (an even subset; a return costs one point, so nearly all of a
    320x240 depth image)."""
    carve_margin_cells: float = 1.5
    """Cells within this many (level) cell sizes in front of a return are not carved (noise, grazing rays)..."""
    carve_margin_m: float = 0.15
    """... nor within this many metres: the pose error between keyframes (odometry drift before refinement) would
    otherwise let one keyframe's rays carve the surface another keyframe saw a few centimetres further."""
    dense_start: float = 5.0
    """When the first training step already has range data, the field's density pre-activation is raised by this
    much (sigma x e^5 ~ 150: ~20 instead of ~0.4): with the free space carved, the first occupied cells along each ray
    are the surfaces, and a dense start makes them opaque at once. Training then sharpens surfaces instead of growing
    them out of a transparent haze, which an Adam step of ~lr in the log-density takes hundreds of steps to do: on the
    demo room's keyframes 300 steps gave 23.4 dB at opacity 0.99 with it, 17.4 dB at opacity 0.6 without
    (docs/results/range.md). 0 = off."""
    min_range_m: float = 0.1
    """Returns nearer than this (metres) are ignored."""
    max_range_m: float = 30.0
    """Returns beyond this (metres) are ignored (the sensor's unreliable tail, sky)."""


def sensor_sigma(z: torch.Tensor, cfg: RangeConfig, metres_per_unit: float, lidar: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """Noise std (scene units) of returns at range ``z`` [R] (scene units); ``lidar`` [R] bool selects the LiDAR
    model for those rays."""
    zm = z * metres_per_unit
    s = cfg.sigma0_m + cfg.sigma_quadratic * zm * zm
    if lidar is not None:
        s = torch.where(lidar, torch.full_like(s, cfg.lidar_sigma_m), s)
    return s / metres_per_unit


def _normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x * (1.0 / math.sqrt(2.0))))


def line_of_sight_loss(weights: torch.Tensor, t_starts: torch.Tensor, t_ends: torch.Tensor, ray_indices: torch.Tensor,
                       ranges: torch.Tensor, sigmas: torch.Tensor, band_sigmas: float = 3.0, eps: float = 1e-4,
                       max_ray_loss: float = 5.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-ray free-space and termination losses of packed samples (see the module docstring).

    Args:
        weights, t_starts, t_ends: [S] compositing weights and sample intervals; ray_indices: [S] int64 into
        ``ranges`` [R] (measured range along the ray, scene units; rays with range <= 0 get no loss) and ``sigmas``
        [R] (noise std, scene units).
    Returns:
        (free [R], termination [R]): ``free_r = sum of w_i with t1_i <= z_r - band_sigmas * sigma_r``;
        ``termination_r = c log(1 + ce_r / c)``, ``ce_r = -sum_i K_i log(w_i + eps)`` with ``K_i`` the mass of
        N(z_r, sigma_r^2) in ``[t0_i, t1_i]`` and ``c = max_ray_loss`` (a robust cap whose gradient never vanishes). Both 0 for rays without a valid range or without samples.
    """
    n = ranges.shape[0]
    z = ranges[ray_indices]
    s = sigmas[ray_indices]
    valid = z > 0
    front = valid & (t_ends <= z - band_sigmas * s)
    free = torch.zeros(n, dtype=weights.dtype).index_add(0, ray_indices, torch.where(front, weights, 0.0))
    k = _normal_cdf((t_ends - z) / s) - _normal_cdf((t_starts - z) / s)
    k = torch.where(valid, k, 0.0)
    ce = torch.zeros(n, dtype=weights.dtype).index_add(0, ray_indices, -k * torch.log(weights + eps))
    # robust, never flat: c * log(1 + ce / c) (a hard cap would stop the gradient of exactly the rays whose surface
    # the field has not found yet)
    return free, max_ray_loss * torch.log1p(ce / max_ray_loss)


def depth_edge_mask(depth: torch.Tensor, rel_jump: float = 0.05) -> torch.Tensor:
    """[H,W] bool: pixels of a z-depth image ``depth`` (0 = none) that are usable returns: valid, and no 3x3 neighbour
    is a hole or differs by more than ``rel_jump`` of the depth (a pixel on a depth edge mixes two surfaces, and a
    depth camera not registered to the colour camera puts it on the wrong side of the colour edge)."""
    d = depth.float()
    pad = torch.nn.functional.pad(d[None, None], (1, 1, 1, 1), mode="replicate")[0, 0]
    h, w = d.shape
    nb = torch.stack([pad[i:i + h, j:j + w] for i in range(3) for j in range(3)])
    lo, hi = nb.min(0).values, nb.max(0).values
    return (d > 0) & (lo > 0) & (hi - lo <= rel_jump * d)


def depth_to_range_rays(depth: torch.Tensor, fx: float, fy: float, cx: float, cy: float,
                        T_cam_depth: torch.Tensor | None = None, max_rays: int | None = None) -> CameraRays:
    """Range rays (camera frame, OpenGL axes) of a pinhole z-depth image [H,W] (0 = none) taken by a depth camera
    at ``T_cam_depth`` (4x4, the depth camera's optical frame in the colour camera's optical frame; None: the same
    camera). For depth images that do not share the colour image's grid; ``max_rays`` takes an even subset."""
    h, w = depth.shape
    v, u = torch.nonzero(depth > 0, as_tuple=True)
    if max_rays is not None and u.numel() > max_rays:
        sel = torch.linspace(0, u.numel() - 1, max_rays).round().long()
        u, v = u[sel], v[sel]
    z = depth[v, u].float()
    p = torch.stack([(u.float() + 0.5 - cx) / fx * z, (v.float() + 0.5 - cy) / fy * z, z], -1)  # optical axes
    o = torch.zeros_like(p)
    if T_cam_depth is not None:
        T = torch.as_tensor(T_cam_depth, dtype=torch.float32)
        p = p @ T[:3, :3].T + T[:3, 3]
        o = o + T[:3, 3]
    return CameraRays.from_points(optical_to_model(o), optical_to_model(p))


def optical_to_model(p: torch.Tensor) -> torch.Tensor:
    """Points in a ROS optical frame (x right, y down, z forward) -> the model's camera axes (OpenGL: y up, z back)."""
    return p * torch.tensor([1.0, -1.0, -1.0], dtype=p.dtype)


class RangeSupervision(TrainerExtension):
    """The trainer extension that applies :func:`line_of_sight_loss` to every ray with a range and carves the
    occupancy grid from new range frames. It holds no parameters: range data lives in the frame store (depth images
    beside the colour images, :class:`CameraRays` for LiDAR returns and unregistered depth)."""

    name = "range"

    def __init__(self, cfg: RangeConfig, metres_per_unit: float = 1.0):
        super().__init__()
        self.cfg = cfg
        self.metres_per_unit = float(metres_per_unit)
        self.frames = None
        self.scene = None
        self._carved: set[int] = set()
        self._step_size = 0.0
        self._started = False
        self.last_stats: dict[str, float] = {}

    @property
    def enabled(self) -> bool:
        return self.cfg.enabled

    def sync(self, frames, scene) -> None:
        self.frames, self.scene = frames, scene

    def _limits(self) -> tuple[float, float]:
        return self.cfg.min_range_m / self.metres_per_unit, self.cfg.max_range_m / self.metres_per_unit

    # -- carving ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def before_step(self, ctx: StepContext) -> None:
        """Carve the grid from the range frames it has not seen yet (at most two a step: carving one costs ~10-30 ms,
        and a burst of keyframes must not stall a step that a RenderView waits for)."""
        self._step_size = ctx.step_size
        if not self.cfg.enabled or self.frames is None:
            return
        if ctx.step == 0 and self.cfg.dense_start and self.frames.has_range and not self._started:
            ctx.field.add_density_bias(self.cfg.dense_start)
        self._started = True
        if not self.cfg.carve or ctx.grid is None:
            return
        budget = 2
        for fid in self.frames.frame_ids():
            if fid in self._carved:
                continue
            rays = self.frames.range_rays_world(fid, self.cfg.hit_rays_per_frame)
            self._carved.add(fid)
            if rays is None:
                continue
            depth, cam = self.frames.depth(fid), self.frames.camera_if_live(fid)
            if depth is not None and cam is not None:
                ctx.grid.carve_depth(cam, [depth], margin=self.cfg.carve_margin_m / self.metres_per_unit)
            o, d, r = rays
            lo, hi = self._limits()
            ok = (r > lo) & (r < hi)
            ctx.grid.carve(o[ok], d[ok], r[ok], self.cfg.carve_margin_cells, free_rays=self.cfg.carve_rays_per_frame,
                           margin=self.cfg.carve_margin_m / self.metres_per_unit)
            budget -= 1
            if budget == 0:
                break

    # -- rays and losses ----------------------------------------------------------------------------------------
    def extra_rays(self, n_rays: int) -> int:
        if not self.cfg.enabled or self.frames is None or not self.frames.has_range_rays:
            return 0
        return max(1, int(n_rays * self.cfg.lidar_rays_fraction)) if self.cfg.lidar_rays_fraction > 0 else 0

    def loss(self, frame_ids: torch.Tensor, out: dict, batch=None) -> torch.Tensor | None:
        self.last_stats = {}
        if not self.cfg.enabled or batch is None:
            return None
        lo, hi = self._limits()
        terms = []
        stats = {}
        if batch.depth is not None and batch.dirs_cam is not None and "weights" in out:
            z = z_depth_to_distance(batch.depth, batch.dirs_cam)
            z = torch.where((batch.depth > 0) & (z > lo) & (z < hi), z, torch.zeros_like(z))
            if bool((z > 0).any()):
                terms.append(self._ray_loss(out, z, None))
                stats["depth_rays"] = float((z > 0).sum())
        rays, eout = batch.range_rays, batch.range_out
        if rays is not None and eout is not None and "weights" in eout:
            z = torch.where((rays.ranges > lo) & (rays.ranges < hi), rays.ranges, torch.zeros_like(rays.ranges))
            terms.append(self._ray_loss(eout, z, torch.ones_like(z, dtype=torch.bool)))
            stats["lidar_rays"] = float((z > 0).sum())
        if not terms:
            return None
        free = torch.cat([t[0] for t in terms])
        ce = torch.cat([t[1] for t in terms])
        n = torch.cat([t[2] for t in terms])
        cnt = n.sum().clamp_min(1.0)
        loss = (self.cfg.free_space_mult * free.sum() + self.cfg.termination_mult * ce.sum()) / cnt
        stats.update(free_space=float(free.detach().sum() / cnt), termination=float(ce.detach().sum() / cnt))
        self.last_stats = stats
        return loss

    def _ray_loss(self, out: dict, z: torch.Tensor, lidar: torch.Tensor | None):
        sig = sensor_sigma(z, self.cfg, self.metres_per_unit, lidar).clamp_min(self._step_size)
        free, ce = line_of_sight_loss(out["weights"], out["t_starts"], out["t_ends"], out["ray_indices"], z, sig,
                                      self.cfg.band_sigmas, max_ray_loss=self.cfg.max_ray_loss)
        return free, ce, (z > 0).float()
