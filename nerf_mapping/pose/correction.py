"""Learnable per-frame SE(3) pose corrections applied in the ray generator: c2w_refined = c2w @ delta(frame).

The correction is expressed in the camera frame (right-multiplied), so a zero parameter is the identity, the rotation
part turns the camera about its own centre and the gradient does not depend on where the camera is in the world
(rotation and translation stay decoupled, which conditions the problem far better than world-frame corrections).

Parametrisations (``PoseCorrectionConfig.mode``); every one stores *zero = identity*, so new frames start at zero
and a pull towards zero is a pull towards the input pose:

=========  ===  ====================================================================================================
mode       D    parameters per frame
=========  ===  ====================================================================================================
so3xr3     6    axis-angle rotation (so(3) exp map, Rodrigues) | translation (independent R3 part)
se3        6    twist (rho, omega) through the full SE(3) exp map (translation coupled through V(omega))
quat       7    unit quaternion offset q = (1,0,0,0) + p[:4] (normalised in the map) | translation
6d         9    continuous 6D representation (Zhou et al., CVPR 2019): the first two rotation columns e1 + p[0:3],
                e2 + p[3:6], Gram-Schmidt-orthonormalised, third column = cross product | translation
=========  ===  ====================================================================================================

Gauge: the photometric loss is invariant to moving every camera *and* the scene by one rigid transform, so the
corrections have a 6-dof null space. ``gauge="fix_first"`` keeps the first frame id (the map's anchor: the frame
store never evicts it) at zero correction; ``gauge="mean"`` subtracts the mean parameter over all frames (a
first-order constraint on the mean correction); ``gauge="none"`` leaves it free. Errors are reported after a Sim(3)
alignment anyway (:mod:`nerf_mapping.evaluation.poses`), so the gauge only keeps the map from drifting.

Regulariser: ``reg_weight * mean ||p||^2`` over the ray batch's frames (a light pull towards the input poses), plus
for ``quat`` a unit-norm penalty that keeps the quaternion's scale (and so its effective learning rate) fixed.

Preconditioning (``precondition="camp"``, after CamP, Park et al., ICCV 2023). Adam takes steps of about ``lr`` in
each raw parameter, but equal steps of different parameters move the image very differently: a rotation of 0.01 rad
shifts every pixel by ~0.01 focal lengths, a translation of 0.01 units shifts a point at depth z by only 0.01/z
focal lengths, a roll about the optical axis moves the centre of the image not at all, and a small yaw looks almost
exactly like a sideways translation. So each frame f optimises ``phi_f`` with ``p_f = P_f phi_f``, where
``P_f = (J_f^T J_f / N)^(-1/2)`` and ``J_f`` is the Jacobian of the normalised image coordinates of N points of the
frame's frustum (a pixel grid at several depths inside the scene box) with respect to ``p`` at zero. In ``phi``
every direction moves the image by the same amount and the yaw/translation ambiguity is decorrelated, so one
learning rate (in radians of image motion) fits rotation and translation, object-centric and room-scale scenes.
Directions that do not move the image at all (the scale of a quaternion, the redundant components of the 6D
representation) get the step size of the best-conditioned direction instead of an infinite one.

Drift spline (``drift_knot_s > 0``, for time-stamped sequences: the online node). Odometry error is mostly a slow
drift of the odometry frame (``odom = B(t) @ true``), not independent per-frame noise. Per-frame corrections learn it
badly on a CPU budget: a step draws ~2 rays per keyframe, so each frame's pose gradient is mostly noise, Adam turns
that noise into a random walk (even from the ground truth, docs/results/drift.md), and one fixed frame cannot anchor
a map that the other frames pull along with their common drift. So a world-frame correction
``L(t) = [exp(w(t)) | v(t)]`` (rotation about the map origin, then translation, like B^-1) is learned as a
piecewise-linear spline of 6-vectors with a knot every ``drift_knot_s`` seconds of frame time, shared by all frames
between two knots: each knot pools the rays of every keyframe in its interval (~20 at 10 keyframes/s and 2 s), and
the first knot (the first frame's time) is fixed, so the map is anchored by everything seen in the first interval.
The knots are learned as increments (knot_k = sum of the first k increments), i.e. in the parametrisation of a random
walk, which is what drift is: a loop-closure gradient on a late knot moves every increment before it by the same
step, so the correction is spread linearly over the path (what a pose graph does) instead of bending only the frames
that see the loop close (independent knots did not lower the ATE at all: docs/results/drift.md). The refined pose of
a frame with input pose A is ``L(t) @ A @ delta``: the per-frame correction keeps the frame-level residual (odometry
jitter). Frames without a time get no drift term. The knots have their own learning rate (``drift_lr``, in radians
and scene units per step) on the same schedule.
The node's settings (a knot every 2 s, knot lr 2e-4, keyframe lr 1e-4, the default warm-up and start delay) stay.
On the demo sequence, other knot learning rates ended worse with frames entering one by one; higher ones also trade
the floor reached from the ground truth for speed. Other knot spacings did no better, a lower keyframe lr gave the
same mean, a longer warm-up mixed results and a longer start delay worse ones. The correction is limited by how fast
the field sharpens on a CPU, not by these settings. The node does not track new keyframes against the frozen field
before training them (frame-to-model tracking): the same time spent on mapping gave a lower ATE. Figures:
docs/results/drift.md (``nerf-mapping benchmark drift``).

Schedule: the pose parameters have their own Adam optimizer; the poses stay put for ``start_steps`` (the field must
first be more than noise), then the learning rate warms up linearly over ``warmup_steps`` and then decays
exponentially from ``lr`` to ``lr_final`` over the run (``trainer.progress``).

Coarse-to-fine (``c2f=(start, end)``, fractions of the run), BARF adapted to the hash grid. BARF (Lin et al. 2021)
shows that the high-frequency positional-encoding bands make the photometric loss, seen as a function of the pose,
rugged: their gradients with respect to the pose are large, change sign every few pixels and pull poses into local
minima, while the low bands give smooth, wide basins. The hash grid has the same structure by level (level l has
resolution R_l = base * b^l, i.e. it carries frequencies around R_l), so instead of frequency bands we weight the
*levels*: level l is multiplied by

    w_l(alpha) = (1 - cos(pi * clamp(alpha * (L - k) - (l - k), 0, 1))) / 2     for l >= k,   w_l = 1 for l < k,

with alpha going linearly from 0 at ``start`` to 1 at ``end`` of the run. The first ``c2f_base_levels`` (= k) levels
are always on: unlike BARF's encoding, a hash grid has no identity input channel, so with every level at zero the
field could not represent anything. The weight multiplies both the level's output and (by the chain rule) the
gradients reaching that level's table *and* the positions, so early pose updates only see the smooth coarse levels.
After ``end`` the weights are removed (``set_level_weights(None)``): full speed, full detail.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from nerf_mapping.extension import StepContext, TrainerExtension
from nerf_mapping.geometry import (compose, invert_rigid, quat_to_rotmat, rotmat_to_quat, se3_exp, se3_log, so3_exp,
                                   so3_log)

MODES = ("off", "so3xr3", "se3", "quat", "6d")
PARAM_DIMS = {"off": 6, "so3xr3": 6, "se3": 6, "quat": 7, "6d": 9}


@dataclass
class PoseCorrectionConfig:
    mode: Literal["off", "so3xr3", "se3", "quat", "6d"] = "off"
    """off: poses are trusted; so3xr3: axis-angle + translation; se3: SE(3) twist; quat: unit quaternion +
    translation; 6d: continuous 6D rotation (Zhou et al. 2019) + translation."""
    lr: float = 2e-3
    """Initial learning rate of the pose parameters (own Adam optimizer; with preconditioning, in radians of image
    motion per step)."""
    lr_final: float = 1e-4
    """Learning rate at the end of the run (exponential decay over trainer.progress)."""
    start_steps: int = 100
    """Steps before the poses start moving (lr 0). The pose gradients of a still-random field are not just noisy but
    biased: on DTU's linear-init cameras, poses moving from step 0 diverged and never came back
    (docs/results/poses.md)."""
    warmup_steps: int = 50
    """Linear warm-up of the pose lr after ``start_steps`` (the field is still rough at first)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas of the pose optimizer."""
    weight_decay: float = 0.0
    """Adam L2 weight decay on the pose parameters (kept for compatibility; prefer reg_weight)."""
    reg_weight: float = 1e-6
    """Light L2 pull of the corrections towards identity (the input poses)."""
    gauge: Literal["fix_first", "mean", "none"] = "fix_first"
    """How the 6-dof gauge freedom is removed (see the module docstring)."""
    c2f: tuple[float, float] | None = None
    """Coarse-to-fine hash-level annealing window (start, end) as fractions of the run; None = off."""
    c2f_base_levels: int = 2
    """Hash levels that are always fully on during coarse-to-fine."""
    precondition: Literal["camp", "diag", "none"] = "camp"
    """camp: per-frame reparametrisation that equalises the image motion of every parameter direction (see the
    module docstring); diag: only its diagonal (per-parameter scales, no decorrelation); none: raw parameters."""
    drift_knot_s: float = 0.0
    """> 0: learn a world-frame drift spline with a knot every this many seconds of frame time (time-stamped
    frames only; see the module docstring). 0 = per-frame corrections only."""
    drift_lr: float = 1e-3
    """Initial learning rate of the drift-spline knots (radians / scene units per step; same schedule as ``lr``)."""
    precondition_max_gain: float = 5.0
    """Cap on the ratio of the largest to the smallest step gain of the preconditioner (0 = no cap). Uncapped, the
    near-ambiguous yaw+sideways-translation direction gets a far larger step than a plain rotation, which lets the
    still random field of the first steps throw poses off (docs/results/poses.md)."""


def _rot6d_to_rotmat(d6: torch.Tensor) -> torch.Tensor:
    """[..., 6] (first two columns, unnormalised) -> [..., 3, 3] by Gram-Schmidt (Zhou et al. 2019)."""
    a1, a2 = d6[..., 0:3], d6[..., 3:6]
    b1 = a1 / torch.linalg.vector_norm(a1, dim=-1, keepdim=True).clamp_min(1e-8)
    a2 = a2 - (b1 * a2).sum(-1, keepdim=True) * b1
    b2 = a2 / torch.linalg.vector_norm(a2, dim=-1, keepdim=True).clamp_min(1e-8)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)  # columns


_EYE6 = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
_QUAT_ID = torch.tensor([1.0, 0.0, 0.0, 0.0])


def params_to_deltas(p: torch.Tensor, mode: str) -> torch.Tensor:
    """Parameters [N, D] of ``mode`` -> camera-frame corrections [N, 3, 4] (differentiable)."""
    if mode in ("so3xr3", "off"):
        return torch.cat([so3_exp(p[:, :3]), p[:, 3:6, None]], dim=-1)
    if mode == "se3":
        return se3_exp(p[:, :6])
    if mode == "quat":
        rot = quat_to_rotmat(p[:, :4] + _QUAT_ID.to(p))
        return torch.cat([rot, p[:, 4:7, None]], dim=-1)
    if mode == "6d":
        rot = _rot6d_to_rotmat(p[:, :6] + _EYE6.to(p))
        return torch.cat([rot, p[:, 6:9, None]], dim=-1)
    raise ValueError(f"unknown pose-correction mode {mode!r}; expected one of {MODES}")


def deltas_to_params(d: torch.Tensor, mode: str) -> torch.Tensor:
    """Inverse of :func:`params_to_deltas`: rigid [N, 3, 4] -> parameters [N, D] (canonical representative)."""
    rot, t = d[:, :3, :3], d[:, :3, 3]
    if mode in ("so3xr3", "off"):
        return torch.cat([so3_log(rot), t], dim=-1)
    if mode == "se3":
        return se3_log(d[:, :3, :4])
    if mode == "quat":
        return torch.cat([rotmat_to_quat(rot) - _QUAT_ID.to(d), t], dim=-1)
    if mode == "6d":
        return torch.cat([rot[:, :, 0] - _EYE6[:3].to(d), rot[:, :, 1] - _EYE6[3:].to(d), t], dim=-1)
    raise ValueError(f"unknown pose-correction mode {mode!r}; expected one of {MODES}")


def frustum_points(camera, scene_box, near: float, far: float, grid: int = 8,
                    fractions: tuple[float, ...] = (0.25, 0.5, 0.75)) -> torch.Tensor:
    """Points [N,3] in the camera frame (OpenGL axes) that the frame sees: a ``grid`` x ``grid`` pixel grid, at
    ``fractions`` of each ray's span inside the scene box (clipped to [near, far]; the whole [near, far] span when
    the ray misses the box)."""
    from nerf_mapping.cameras import camera_directions
    from nerf_mapping.rendering.marching import ray_aabb_intersect

    w, h = float(camera.width[0]), float(camera.height[0])
    u = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
    px, py = torch.meshgrid(u * w, u * h, indexing="xy")
    px, py = px.reshape(-1), py.reshape(-1)
    d_cam = camera_directions(camera, torch.zeros_like(px, dtype=torch.long), px, py).double()  # [G,3]
    c2w = camera.c2w[0].double()
    o = c2w[:, 3]
    d_w = d_cam @ c2w[:, :3].T
    box = torch.as_tensor(scene_box, dtype=torch.float64).reshape(2, 3)
    with torch.no_grad():
        t_in, t_out = ray_aabb_intersect(o.expand_as(d_w), d_w, box[0], box[1])
        t_in, t_out = t_in.clamp_min(near), t_out.clamp_max(far)
        miss = t_out <= t_in
        t_in = torch.where(miss, torch.full_like(t_in, near), t_in)
        t_out = torch.where(miss, torch.full_like(t_out, far), t_out)
    fr = torch.tensor(fractions, dtype=torch.float64)
    t = t_in[:, None] + (t_out - t_in)[:, None] * fr[None]  # [G,K]
    norm = torch.linalg.vector_norm(d_cam, dim=-1, keepdim=True)
    return ((d_cam / norm)[:, None, :] * t[..., None]).reshape(-1, 3)


def camp_preconditioner(points_cam: torch.Tensor, mode: str, diag: bool = False,
                        max_gain: float = 0.0) -> torch.Tensor:
    """P = (J^T J / N)^(-1/2) [D,D] for camera-frame points [N,3] (OpenGL axes; see the module docstring)."""
    x = points_cam.double()
    dim = PARAM_DIMS[mode]

    def image_coords(p):
        d = params_to_deltas(p[None], mode)[0]  # c2w' = c2w @ d, so a world point's camera coordinates are d^-1 x
        y = (x - d[:, 3]) @ d[:, :3]
        z = (-y[:, 2]).clamp_min(1e-6)
        return torch.stack([y[:, 0] / z, y[:, 1] / z], -1).reshape(-1)

    # central differences in float64 (D <= 9 cheap evaluations; far cheaper than autograd's jacobian here)
    eps = 1e-6
    steps = torch.eye(dim, dtype=torch.float64) * eps
    J = torch.stack([(image_coords(e) - image_coords(-e)) / (2 * eps) for e in steps], -1)  # [2N, D]
    JtJ = J.T @ J / x.shape[0]
    if diag:
        JtJ = torch.diag(JtJ.diagonal())
    lam, V = torch.linalg.eigh(0.5 * (JtJ + JtJ.T))
    lam_max = float(lam.max())
    lam = torch.where(lam < 1e-6 * lam_max, torch.full_like(lam, lam_max), lam)  # null directions: see docstring
    gain = lam.rsqrt()
    if max_gain > 0:
        gain = gain.clamp_max(float(gain.min()) * max_gain)
    return (V * gain[None]) @ V.T


def c2f_level_weights(alpha: float, n_levels: int, base_levels: int = 2) -> torch.Tensor:
    """BARF-style smooth level weights for progress ``alpha`` in [0, 1] (see the module docstring)."""
    k = min(max(int(base_levels), 0), n_levels)
    lv = torch.arange(n_levels, dtype=torch.float32)
    x = (float(alpha) * (n_levels - k) - (lv - k)).clamp(0.0, 1.0)
    w = (1.0 - torch.cos(x * math.pi)) * 0.5
    w[:k] = 1.0
    return w


def apply_deltas(c2w: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """c2w [N,3,4] @ delta [N,3,4] (camera-frame correction) -> [N,3,4]."""
    rot = c2w[:, :, :3] @ d[:, :, :3]
    trans = c2w[:, :, 3:] + c2w[:, :, :3] @ d[:, :, 3:]
    return torch.cat([rot, trans], dim=-1)


def drift_knot_transforms(knots: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """World-frame corrections [N,3,4] at spline coordinates ``u`` [N] (time / knot spacing, >= 0) of the
    piecewise-linear spline through ``knots`` [K,6] = (rotation vector, translation); clamped past the last knot."""
    k = knots.shape[0]
    i = u.floor().clamp(0, max(k - 2, 0)).long()
    w = (u - i.to(u.dtype)).clamp(0.0, 1.0).to(knots.dtype)[:, None]
    p = knots[i] * (1 - w) + knots[(i + 1).clamp_max(k - 1)] * w
    return torch.cat([so3_exp(p[:, :3]), p[:, 3:6, None]], dim=-1)


class PoseCorrection(TrainerExtension):
    """Per-frame corrections (and the drift spline) as a trainer extension: they grow with the frame store, get their
    preconditioner and spline registration on first sight, follow their own schedule and correct the ray batch's
    camera poses."""

    name = "pose"

    def __init__(self, cfg: PoseCorrectionConfig, num_frames: int = 0):
        super().__init__()
        if cfg.mode not in MODES:
            raise ValueError(f"pose.mode must be one of {MODES}, got {cfg.mode!r}")
        if cfg.gauge not in ("fix_first", "mean", "none"):
            raise ValueError(f"pose.gauge must be fix_first, mean or none, got {cfg.gauge!r}")
        if cfg.c2f is not None:
            s, e = (float(v) for v in cfg.c2f)
            if not (0.0 <= s <= e):
                raise ValueError(f"pose.c2f must be (start, end) with 0 <= start <= end, got {cfg.c2f}")
        self.cfg = cfg
        self.dim = PARAM_DIMS[cfg.mode]
        if cfg.precondition not in ("camp", "diag", "none"):
            raise ValueError(f"pose.precondition must be camp, diag or none, got {cfg.precondition!r}")
        n = max(num_frames, 1)
        self.params = nn.Parameter(torch.zeros(n, self.dim))
        # per-frame preconditioner (identity until set_preconditioner); saved with the checkpoint
        self.register_buffer("precond", torch.eye(self.dim).expand(n, self.dim, self.dim).clone())
        self.precond_set = torch.zeros(n, dtype=torch.bool)
        self._c2f_active = False
        if cfg.drift_knot_s < 0:
            raise ValueError(f"pose.drift_knot_s must be >= 0, got {cfg.drift_knot_s}")
        # drift spline (see the module docstring): knots, each frame's input pose and time (NaN: none), time origin
        self.knots = nn.Parameter(torch.zeros(2, 6))
        self.register_buffer("anchor", torch.eye(3, 4).expand(n, 3, 4).clone())
        self.register_buffer("frame_time", torch.full((n,), float("nan"), dtype=torch.float64))
        self.register_buffer("t0", torch.tensor(float("nan"), dtype=torch.float64))
        self.registered = torch.zeros(n, dtype=torch.bool)

    @property
    def enabled(self) -> bool:
        return self.cfg.mode != "off"

    @property
    def drift_enabled(self) -> bool:
        return self.enabled and self.cfg.drift_knot_s > 0

    def ensure_size(self, n: int) -> bool:
        """Grow to hold ``n`` frames (new frames start at identity). Returns True when the parameter was replaced."""
        if n <= self.params.shape[0]:
            return False
        k = n - self.params.shape[0]
        grow = torch.zeros(k, self.dim, dtype=self.params.dtype)
        self.params = nn.Parameter(torch.cat([self.params.data, grow]))
        eye = torch.eye(self.dim, dtype=self.precond.dtype).expand(k, self.dim, self.dim)
        self.precond = torch.cat([self.precond, eye])
        self.precond_set = torch.cat([self.precond_set, torch.zeros(k, dtype=torch.bool)])
        self.anchor = torch.cat([self.anchor, torch.eye(3, 4, dtype=self.anchor.dtype).expand(k, 3, 4)])
        self.frame_time = torch.cat([self.frame_time, self.frame_time.new_full((k,), float("nan"))])
        self.registered = torch.cat([self.registered, torch.zeros(k, dtype=torch.bool)])
        return True

    def needs_registration(self) -> list[int]:
        """Frame ids whose input pose and time the drift spline has not seen yet (empty when it is off)."""
        if not self.drift_enabled:
            return []
        return torch.nonzero(~self.registered).reshape(-1).tolist()

    def register_frame(self, fid: int, c2w: torch.Tensor, time_s: float | None) -> bool:
        """Record frame ``fid``'s input pose c2w [3,4] and time (seconds; None: no drift term for it). Grows the
        knots to cover the time; returns True when the knot parameter was replaced (rebuild the optimizer)."""
        self.registered[fid] = True
        with torch.no_grad():
            self.anchor[fid] = c2w[:3, :4].to(self.anchor.dtype)
        if time_s is None or not math.isfinite(float(time_s)):
            return False
        if not torch.isfinite(self.t0):
            self.t0.fill_(float(time_s))
        self.frame_time[fid] = float(time_s)
        need = int(math.floor(max(float(time_s) - float(self.t0), 0.0) / self.cfg.drift_knot_s)) + 2
        if need <= self.knots.shape[0]:
            return False
        grow = self.knots.new_zeros(need - self.knots.shape[0], 6)  # zero increments: new knots continue the last
        self.knots = nn.Parameter(torch.cat([self.knots.detach(), grow]))
        return True

    def knot_values(self) -> torch.Tensor:
        """[K,6] spline knots: the cumulative sum of the learned increments (see the module docstring); the first
        knot is zero under ``gauge="fix_first"`` (the map's anchor: the first frame's time)."""
        inc = self.knots
        if self.cfg.gauge == "fix_first":
            inc = torch.cat([torch.zeros_like(inc[:1]), inc[1:]])
        return torch.cumsum(inc, dim=0)

    def drift_transforms(self) -> torch.Tensor:
        """[F,3,4] world-frame drift correction of every frame id (identity for frames without a time)."""
        n = self.params.shape[0]
        eye = torch.eye(3, 4, dtype=self.params.dtype).expand(n, 3, 4)
        if not self.drift_enabled or not torch.isfinite(self.t0):
            return eye
        knots = self.knot_values()
        has_t = torch.isfinite(self.frame_time)
        u = ((self.frame_time - self.t0) / self.cfg.drift_knot_s).clamp_min(0.0)
        L = drift_knot_transforms(knots, torch.where(has_t, u, torch.zeros_like(u)))
        return torch.where(has_t[:, None, None], L, eye)

    def select(self, ids: list[int]) -> None:
        """Keep only frame ids ``ids`` (renumbered 0..len-1 in that order), e.g. after re-indexing a map."""
        idx = torch.as_tensor(ids, dtype=torch.long)
        self.params = nn.Parameter(self.params.detach()[idx].clone())
        self.precond = self.precond[idx].clone()
        self.precond_set = self.precond_set[idx].clone()
        self.anchor = self.anchor[idx].clone()
        self.frame_time = self.frame_time[idx].clone()
        self.registered = self.registered[idx].clone()

    def needs_preconditioner(self) -> list[int]:
        """Frame ids whose preconditioner has not been computed yet (empty when preconditioning is off)."""
        if not self.enabled or self.cfg.precondition == "none":
            return []
        return torch.nonzero(~self.precond_set).reshape(-1).tolist()

    def pending_frames(self) -> list[int]:
        """Frame ids that still need :meth:`init_frame` (a preconditioner or a drift-spline registration)."""
        return sorted(set(self.needs_preconditioner()) | set(self.needs_registration()))

    def init_frame(self, fid: int, camera, time_s: float | None, scene_box, near: float, far: float) -> bool:
        """First sight of frame ``fid`` (Cameras of length 1, or None when it was evicted before it was ever
        trained): its preconditioner and its drift-spline registration, whichever is pending. Returns True when a
        parameter was replaced (rebuild the optimizer)."""
        if camera is None:
            self.precond_set[fid] = True
            self.registered[fid] = True
            return False
        if self.cfg.precondition != "none" and not bool(self.precond_set[fid]):
            self.set_preconditioner(fid, camera, scene_box, near, far)
        if self.drift_enabled and not bool(self.registered[fid]):
            return self.register_frame(fid, camera.c2w[0], time_s)
        return False

    def set_preconditioner(self, fid: int, camera, scene_box, near: float, far: float) -> None:
        """Compute frame ``fid``'s preconditioner from its camera (Cameras of length 1) and the scene bounds.

        Keeps the frame's current correction: phi is re-expressed in the new parametrisation."""
        P = camp_preconditioner(frustum_points(camera, scene_box, near, far), self.cfg.mode,
                                diag=self.cfg.precondition == "diag",
                                max_gain=self.cfg.precondition_max_gain).to(self.precond.dtype)
        with torch.no_grad():
            p = self.precond[fid] @ self.params[fid]
            self.params[fid] = torch.linalg.solve(P, p)
            self.precond[fid] = P
        self.precond_set[fid] = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "precond"
        if key not in state_dict:  # checkpoints written before preconditioning: identity
            n = state_dict[prefix + "params"].shape[0] if prefix + "params" in state_dict else self.params.shape[0]
            state_dict[key] = torch.eye(self.dim).expand(n, self.dim, self.dim).clone()
        n = state_dict[key].shape[0]
        # checkpoints written before the drift spline: no knots, anchors unknown (re-registered from the frames)
        state_dict.setdefault(prefix + "knots", torch.zeros(2, 6))
        state_dict.setdefault(prefix + "anchor", torch.eye(3, 4).expand(n, 3, 4).clone())
        state_dict.setdefault(prefix + "frame_time", torch.full((n,), float("nan"), dtype=torch.float64))
        state_dict.setdefault(prefix + "t0", torch.tensor(float("nan"), dtype=torch.float64))
        self.knots = nn.Parameter(self.knots.new_zeros(state_dict[prefix + "knots"].shape))  # sized like the saved
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.precond_set = torch.ones(self.precond.shape[0], dtype=torch.bool)
        self.registered = torch.isfinite(self.frame_time) | (self.anchor != torch.eye(3, 4)).any(-1).any(-1)

    def make_optimizer(self) -> torch.optim.Optimizer | None:
        """The pose parameters' own optimizer (None when disabled)."""
        if not self.enabled:
            return None
        groups = [{"params": [self.params], "lr": self.cfg.lr, "lr_ratio": 1.0}]
        if self.drift_enabled:
            ratio = self.cfg.drift_lr / self.cfg.lr if self.cfg.lr > 0 else 0.0
            groups.append({"params": [self.knots], "lr": self.cfg.drift_lr, "lr_ratio": ratio, "weight_decay": 0.0})
        return torch.optim.Adam(groups, lr=self.cfg.lr, betas=tuple(self.cfg.betas),
                                weight_decay=self.cfg.weight_decay)

    # -- schedules ------------------------------------------------------------------------------------------------
    def lr_at(self, step: int, progress: float) -> float:
        c = self.cfg
        if step < c.start_steps:
            return 0.0
        step = step - c.start_steps
        warm = min(1.0, (step + 1) / c.warmup_steps) if c.warmup_steps > 0 else 1.0
        ratio = (c.lr_final / c.lr) if c.lr > 0 and c.lr_final > 0 else 1.0
        return c.lr * warm * ratio ** min(max(progress, 0.0), 1.0)

    def c2f_alpha(self, progress: float) -> float | None:
        """Annealing progress in [0, 1], or None when coarse-to-fine is off."""
        if self.cfg.c2f is None:
            return None
        s, e = (float(v) for v in self.cfg.c2f)
        if e <= s:
            return 1.0 if progress >= e else 0.0
        return min(max((progress - s) / (e - s), 0.0), 1.0)

    def before_step(self, ctx: StepContext) -> None:
        """Pose lr schedule and coarse-to-fine level weights of the field's hash encoding."""
        if self.optimizer is not None:
            lr = self.lr_at(ctx.step, ctx.progress)
            for g in self.optimizer.param_groups:
                g["lr"] = lr * g.get("lr_ratio", 1.0)
        alpha = self.c2f_alpha(ctx.progress)
        enc = ctx.field.encoding
        if alpha is None:
            return
        if alpha >= 1.0:
            if self._c2f_active:
                enc.set_level_weights(None)
                self._c2f_active = False
            return
        enc.set_level_weights(c2f_level_weights(alpha, enc.cfg.n_levels, self.cfg.c2f_base_levels))
        self._c2f_active = True

    # -- trainer hooks --------------------------------------------------------------------------------------------
    def sync(self, frames, scene) -> None:
        """New frames: grow, then give each frame seen for the first time its preconditioner and spline registration
        (a frame evicted before it was ever trained gets neither)."""
        rebuild = self.ensure_size(frames.num_ids)
        pending = self.pending_frames()
        if pending:
            for fid in pending:
                cam = frames.camera_if_live(fid)  # None: evicted (also while this loop runs)
                # the inner box of an automatic extent is where the cameras look; the field's box is 4x larger
                box = scene.occupancy_box or scene.scene_box
                rebuild |= self.init_frame(fid, cam, frames.stamp(fid), box, scene.near, scene.far)
        if rebuild:  # a pose parameter was replaced: rebuild its optimizer, keeping nothing stale
            self.rebuild_optimizer()

    def transform_c2w(self, c2w: torch.Tensor, frame_ids: torch.Tensor) -> torch.Tensor:
        return self(c2w, frame_ids)

    def loss(self, frame_ids: torch.Tensor, out: dict, batch=None) -> torch.Tensor | None:
        return self.regularizer(frame_ids) if self.enabled else None

    def prepare_load(self, state: dict) -> None:
        self.ensure_size(state["params"].shape[0])

    # -- corrections ----------------------------------------------------------------------------------------------
    def effective_params(self) -> torch.Tensor:
        """[F, D] parameters (preconditioner applied) after the gauge constraint."""
        p = (self.precond.to(self.params.dtype) @ self.params[..., None])[..., 0]
        if self.cfg.gauge == "fix_first":
            mask = torch.ones(p.shape[0], 1, dtype=p.dtype, device=p.device)
            mask[0] = 0.0
            p = p * mask
        elif self.cfg.gauge == "mean" and p.shape[0] > 1:
            p = p - p.mean(0, keepdim=True)
        return p

    def all_deltas(self) -> torch.Tensor:
        """[F, 3, 4] camera-frame corrections of every frame id (with the drift spline: the whole correction
        ``A^-1 L(t) A delta`` of a frame with input pose A, so that ``A @ all_deltas()[f]`` is its refined pose)."""
        d = params_to_deltas(self.effective_params(), self.cfg.mode)
        if not self.drift_enabled:
            return d
        # in float64: A^-1 L A of an identity L must come out as exactly the identity (float32 leaves ~1e-7, which
        # reads as a 0.03 deg rotation through arccos)
        A, L, d64 = self.anchor.double(), self.drift_transforms().double(), d.double()
        return apply_deltas(compose(invert_rigid(A), compose(L, A)), d64).to(d.dtype)

    def deltas(self, frame_ids: torch.Tensor) -> torch.Tensor:
        """[R] -> [R,3,4] camera-frame corrections. A frame added since the last training step's :meth:`sync` has
        no parameters yet (the trainer never saw it) and keeps its input pose: the identity (an export or a query
        between a keyframe's arrival and the next step reads it)."""
        d = self.all_deltas()
        n = int(frame_ids.max()) + 1 if frame_ids.numel() else 0
        if n > d.shape[0]:
            d = torch.cat([d, torch.eye(3, 4, dtype=d.dtype).expand(n - d.shape[0], 3, 4)])
        return d[frame_ids]

    def regularizer(self, frame_ids: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return self.params.new_zeros(())
        p = self.effective_params()[torch.unique(frame_ids)]
        loss = self.params.new_zeros(())
        if self.cfg.reg_weight > 0:
            loss = loss + self.cfg.reg_weight * (p * p).sum(-1).mean()
        if self.cfg.mode == "quat":
            q = p[:, :4] + _QUAT_ID.to(p)
            loss = loss + 1e-3 * ((q * q).sum(-1) - 1.0).pow(2).mean()
        return loss

    def forward(self, c2w: torch.Tensor, frame_ids: torch.Tensor) -> torch.Tensor:
        """Apply corrections. c2w [R,3,4], frame_ids [R] -> [R,3,4]."""
        if not self.enabled:
            return c2w
        return apply_deltas(c2w, self.deltas(frame_ids).to(c2w.dtype))

    @torch.no_grad()
    def refined(self, c2w: torch.Tensor, frame_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Refined poses [F,3,4] of frames ``frame_ids`` (default 0..F-1) whose input poses are ``c2w``."""
        if frame_ids is None:
            frame_ids = torch.arange(c2w.shape[0])
        if not self.enabled:
            return c2w.clone()
        return apply_deltas(c2w, self.deltas(frame_ids).to(c2w.dtype))
