"""Handheld camera trajectory, the fixed base_link -> camera_optical extrinsic (numpy; the SE(3) helpers are
:mod:`nerf_mapping.geometry.rigid`).

Frames (REP 103/105):
- ``world`` (= ``map``): z up, metres; the ground-truth ``odom`` frame coincides with it.
- ``base_link``: x forward, y left, z up, rigidly attached to the hand-held rig.
- ``camera_optical``: z forward, x right, y down (OpenCV), fixed w.r.t. base_link by ``base_to_camera_optical()``.

The trajectory is a closed-form smooth function of time, so it can be sampled at image stamps and (denser, on another
clock grid) at odometry stamps. Poses are 4x4 float64 matrices ``T_parent_child`` (maps child coords to parent).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nerf_mapping.geometry.rigid import inv_pose, make_pose, so3_exp

# OpenCV optical axes (x right, y down, z forward) -> OpenGL/nerfstudio camera axes (x right, y up, z back).
# Kept local because this module only needs the constant; the project-wide converter is nerf_mapping.geometry.
CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])


def rot_y(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1.0, 0], [-s, 0, c]])


def rot_z(a) -> np.ndarray:
    """Rotation(s) about z; ``a`` scalar -> [3,3], array [N] -> [N,3,3]."""
    a = np.asarray(a, float)
    c, s = np.cos(a), np.sin(a)
    z, o = np.zeros_like(a), np.ones_like(a)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)


# ----------------------------------------------------------------------------------------------------------------------

# base_link -> camera_optical: camera 10 cm ahead of and 5 cm above base_link, pitched 10 deg down.
CAMERA_OFFSET = np.array([0.10, 0.0, 0.05])
CAMERA_PITCH_DOWN_DEG = 10.0


def base_to_camera_optical() -> np.ndarray:
    """T_base_cam (pose of camera_optical in base_link). Columns of the rotation are the optical axes in base_link:
    optical z = forward (base +x), optical x = right (base -y), optical y = down (base -z), then pitched down."""
    r_level = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    # positive rotation about base +y tips the forward axis towards -z (nose down, REP 103)
    return make_pose(rot_y(np.deg2rad(CAMERA_PITCH_DOWN_DEG)) @ r_level, CAMERA_OFFSET)


@dataclass
class TrajectoryParams:
    """Closed-form handheld path: an ellipse around the room centre with slow radius/height/target variations and a
    sum-of-sinusoids shake. All values are drawn from the seed once; the path itself is deterministic in time."""

    duration: float
    semi_axes: tuple[float, float] = (1.55, 1.0)
    height: float = 1.4
    start_angle: float = 0.0
    direction: float = 1.0
    phases: tuple[float, ...] = (0.0,) * 8
    shake_freq: np.ndarray | None = None  # [6,3] Hz (3 sinusoids per axis: tx, ty, tz, rx, ry, rz)
    shake_phase: np.ndarray | None = None  # [6,3]
    shake_amp_trans: float = 0.004  # m per sinusoid
    shake_amp_rot: float = np.deg2rad(0.35)  # rad per sinusoid

    @staticmethod
    def from_seed(seed: int, duration: float) -> "TrajectoryParams":
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7A1EC]))
        return TrajectoryParams(
            duration=duration,
            start_angle=float(rng.uniform(0, 2 * np.pi)),
            direction=float(rng.choice([-1.0, 1.0])),
            phases=tuple(float(x) for x in rng.uniform(0, 2 * np.pi, 8)),
            shake_freq=rng.uniform(1.2, 4.0, (6, 3)),
            shake_phase=rng.uniform(0, 2 * np.pi, (6, 3)),
        )


def camera_poses(params: TrajectoryParams, t: np.ndarray) -> np.ndarray:
    """T_world_cam [N,4,4] (OpenCV optical axes) at times ``t`` [N] seconds since the start of the capture."""
    t = np.asarray(t, float)
    ph = params.phases
    u = t / params.duration  # 0..1 over the capture; one loop around the room
    ang = params.start_angle + params.direction * 2 * np.pi * u
    radial = 1.0 + 0.08 * np.sin(2 * np.pi * 2.0 * u + ph[0])
    eye = np.stack(
        [
            params.semi_axes[0] * radial * np.cos(ang),
            params.semi_axes[1] * radial * np.sin(ang),
            params.height + 0.12 * np.sin(2 * np.pi * 1.5 * u + ph[1]),
        ],
        -1,
    )
    # look at a point that wanders around the table so views sweep across the furniture, not only the room centre
    target = np.stack(
        [
            0.45 * np.cos(2 * np.pi * 1.3 * u + ph[2]),
            0.35 * np.sin(2 * np.pi * 0.9 * u + ph[3]),
            0.7 + 0.15 * np.sin(2 * np.pi * 1.1 * u + ph[4]),
        ],
        -1,
    )
    return _handheld_pose(params, t, u, eye, target)


def corridor_camera_poses(params: TrajectoryParams, t: np.ndarray, x_range: tuple[float, float] = (-13.5, 13.5),
                          height: float = 1.4) -> np.ndarray:
    """T_world_cam [N,4,4] walking down the corridor layout (``layout.build_corridor_mesh``) along x: an easy start
    and stop at the ends of ``x_range``, a little sway across the corridor, the gaze sweeping +-35 degrees about the
    walking direction (it looks into the side rooms through their doorways) and the room path's hand shake."""
    t = np.asarray(t, float)
    ph = params.phases
    u = np.clip(t / params.duration, 0.0, 1.0)
    s = u - np.sin(2 * np.pi * u) / (2 * np.pi)  # 0..1 with zero speed at both ends
    eye = np.stack([x_range[0] + (x_range[1] - x_range[0]) * s,
                    0.12 * np.sin(2 * np.pi * 1.5 * u + ph[0]),
                    height + 0.05 * np.sin(2 * np.pi * 2.0 * u + ph[1])], -1)
    yaw = np.deg2rad(35.0) * np.sin(2 * np.pi * 3.0 * u + ph[2])
    target = eye + np.stack([np.cos(yaw), np.sin(yaw), -0.15 + 0.05 * np.sin(2 * np.pi * 1.1 * u + ph[4])], -1)
    return _handheld_pose(params, t, u, eye, target)


def _handheld_pose(params: TrajectoryParams, t: np.ndarray, u: np.ndarray, eye: np.ndarray,
                   target: np.ndarray) -> np.ndarray:
    """Camera at ``eye`` [N,3] looking at ``target`` [N,3] (horizon level), then a slow roll and the hand shake."""
    ph = params.phases
    fwd = target - eye
    fwd /= np.linalg.norm(fwd, axis=-1, keepdims=True)
    right = np.cross(fwd, np.array([0.0, 0.0, 1.0]))
    right /= np.linalg.norm(right, axis=-1, keepdims=True)
    down = np.cross(fwd, right)
    r = np.stack([right, down, fwd], -1)  # columns: optical x, y, z in world
    # small slow roll like a hand-held device, then high-frequency shake applied in the camera frame
    roll = np.deg2rad(3.0) * np.sin(2 * np.pi * 0.7 * u + ph[5])
    shake = np.zeros(t.shape + (6,))
    if params.shake_freq is not None:
        s = np.sin(2 * np.pi * params.shake_freq[None] * t[:, None, None] + params.shake_phase[None]).sum(-1)  # [N,6]
        shake = s * np.array([params.shake_amp_trans] * 3 + [params.shake_amp_rot] * 3)
    rot_vec = shake[:, 3:] + np.stack([np.zeros_like(roll), np.zeros_like(roll), roll], -1)
    r = r @ so3_exp(rot_vec)
    eye = eye + (r @ shake[:, :3, None])[..., 0]
    return make_pose(r, eye)


def camera_to_base_poses(t_world_cam: np.ndarray) -> np.ndarray:
    """T_world_base = T_world_cam @ inv(T_base_cam)."""
    return t_world_cam @ inv_pose(base_to_camera_optical())


def opencv_c2w_to_opengl(t_world_cam: np.ndarray) -> np.ndarray:
    """Camera-to-world with OpenCV axes -> nerfstudio/OpenGL camera axes (flip camera y and z)."""
    return t_world_cam @ CV_TO_GL
