"""Axis conventions, rigidity checks and scene normalisation.

Model poses are camera-to-world [..., 3, 4] with OpenGL camera axes (x right, y up, z back), like nerfstudio's
``transform_matrix``; ROS optical frames and OpenCV use x right, y down, z forward. The conversion between the two
lives here and nowhere else (``opencv_to_opengl``, ``optical_pose_to_model_c2w``, ``model_c2w_to_optical_pose``).
"""

from __future__ import annotations

import numpy as np
from torch import Tensor


# ====================================================================== axis conventions
def opencv_to_opengl(c2w):
    """Convert a camera-to-world pose between OpenCV camera axes (x right, y down, z forward; ROS optical frames)
    and OpenGL axes (x right, y up, z back) by negating the y and z rotation columns.

    c2w: [..., 3, 4] or [..., 4, 4] (or [..., 3, 3]) numpy array or torch tensor. The map is an involution, so the
    same function converts back (``opengl_to_opencv`` is an alias). Returns a new array of the same type.
    """
    out = c2w.clone() if isinstance(c2w, Tensor) else np.array(c2w, copy=True)
    out[..., :3, 1] = -out[..., :3, 1]
    out[..., :3, 2] = -out[..., :3, 2]
    return out


opengl_to_opencv = opencv_to_opengl


def is_rigid(R, tol: float = 1e-3) -> bool:
    """True if every rotation in ``R`` ([...,3,3] numpy or torch; extra columns ignored) is orthonormal with det +1
    and finite, to within ``tol`` (max abs error of R^T R - I and det - 1)."""
    r = R.detach().cpu().double().numpy() if isinstance(R, Tensor) else np.asarray(R, dtype=np.float64)
    r = r[..., :3, :3]
    if not np.all(np.isfinite(r)):
        return False
    eye = np.eye(3)
    ortho = np.abs(np.swapaxes(r, -1, -2) @ r - eye).max(initial=0.0)
    det = np.abs(np.linalg.det(r) - 1.0).max(initial=0.0) if r.size else 0.0
    return bool(ortho <= tol and det <= tol)


def rigidity_error(R) -> tuple[float, float]:
    """(max |R^T R - I|, min det) over a batch of 3x3 numpy matrices: used for precise error messages."""
    r = np.asarray(R, dtype=np.float64)[..., :3, :3]
    ortho = float(np.abs(np.swapaxes(r, -1, -2) @ r - np.eye(3)).max(initial=0.0))
    det = float(np.linalg.det(r).min(initial=np.inf)) if r.size else 1.0
    return ortho, det


def optical_pose_to_model_c2w(T_world_optical) -> np.ndarray:
    """4x4 pose of an optical frame (z fwd, x right, y down; ROS/OpenCV) -> model c2w [3,4] float32 (OpenGL axes)."""
    T = np.asarray(T_world_optical, dtype=np.float64)
    return opencv_to_opengl(T[:3, :4]).astype(np.float32)


def model_c2w_to_optical_pose(c2w) -> np.ndarray:
    """Inverse of :func:`optical_pose_to_model_c2w`: model c2w [3,4] -> 4x4 optical-frame pose (float64)."""
    T = np.eye(4)
    T[:3, :4] = opencv_to_opengl(np.asarray(c2w, dtype=np.float64)[:3, :4])
    return T


# ====================================================================== scene normalisation
def _nearest_point_to_axes(o: np.ndarray, d: np.ndarray, cond_max: float) -> np.ndarray | None:
    """Least-squares point nearest to the lines through ``o`` [N,3] along the unit directions ``d`` [N,3]: minimises
    sum_i |(I - d_i d_i^T)(p - o_i)|^2. None when it is not fixed: fewer than two lines, or an ill-conditioned
    (condition number above ``cond_max``, e.g. parallel axes) or non-finite system."""
    if len(o) < 2:
        return None
    proj = np.eye(3)[None] - d[:, :, None] * d[:, None, :]  # [N,3,3] projectors orthogonal to each axis
    A = proj.sum(0)
    b = (proj @ o[:, :, None]).sum(0)[:, 0]
    if not np.all(np.isfinite(A)) or np.linalg.cond(A) > cond_max:
        return None
    return np.linalg.solve(A, b)


def focus_point(c2w, cond_max: float = 1e4) -> np.ndarray:
    """Least-squares point nearest to all camera optical axes (OpenGL: axis = -Z column through the centre).

    c2w: [N, 3, 4] numpy/torch. Returns a float64 [3] point. Minimises sum_i |(I - d_i d_i^T)(p - o_i)|^2; falls back
    to the mean camera centre when the system is ill-conditioned (e.g. parallel axes of a forward-facing capture,
    or a single camera). :func:`strict_focus_point` is the variant that says when there is no focus instead.
    """
    c = c2w.detach().cpu().double().numpy() if isinstance(c2w, Tensor) else np.asarray(c2w, dtype=np.float64)
    o = c[:, :3, 3]
    d = -c[:, :3, 2]
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    p = _nearest_point_to_axes(o, d, cond_max)
    return o.mean(0) if p is None else p


def strict_focus_point(centres, axes, min_angle_deg: float = 10.0, cond_max: float = 1e4) -> np.ndarray | None:
    """The point closest (least squares) to every camera axis (``centres`` [N,3], viewing ``axes`` [N,3], normalised
    here), or None when the cameras do not look at a common point: the axes are too parallel to fix it (spread of
    directions below ``min_angle_deg``, or condition number above ``cond_max``) or it lies behind more than a quarter
    of the cameras. The online mapper's extent test (:func:`nerf_mapping.mapping.extent.auto_extent`); the scene
    normalisation uses :func:`focus_point`, which always returns a point."""
    centres = np.asarray(centres, dtype=np.float64)
    if len(centres) < 2:
        return None
    axes = np.asarray(axes, dtype=np.float64)
    d = axes / np.linalg.norm(axes, axis=1, keepdims=True)
    mean_dir = d.mean(0)
    spread = np.degrees(np.arccos(np.clip(d @ (mean_dir / max(np.linalg.norm(mean_dir), 1e-12)), -1, 1))).max()
    if spread < min_angle_deg:
        return None
    p = _nearest_point_to_axes(centres, d, cond_max)
    if p is None or (((p - centres) * d).sum(1) < 0).mean() > 0.25:
        return None
    return p


def normalize_poses(c2w, radius: float = 1.0) -> tuple[np.ndarray, float]:
    """Similarity that centres the scene at :func:`focus_point` and scales the camera centres into ``radius``.

    Returns (world_transform [3,4] float64 with x_scene = T @ [x, 1], scale). No rotation: the file's up axis is kept.
    """
    c = c2w.detach().cpu().double().numpy() if isinstance(c2w, Tensor) else np.asarray(c2w, dtype=np.float64)
    p = focus_point(c)
    dist = np.linalg.norm(c[:, :3, 3] - p, axis=-1)
    far = float(dist.max()) if dist.size else 0.0
    scale = radius / far if far > 1e-9 else 1.0
    T = np.concatenate([np.eye(3) * scale, (-scale * p)[:, None]], 1)
    return T, scale


def transform_poses(world_transform, c2w):
    """Apply a similarity ``world_transform`` [3,4] (rotation * uniform scale | t) to c2w poses [N,3,4].

    The pose rotation gets only the rotation part (scale removed) so it stays orthonormal. numpy in, numpy out.
    """
    W = np.asarray(world_transform, dtype=np.float64)
    c = np.asarray(c2w, dtype=np.float64)[:, :3, :4]
    s = np.cbrt(np.linalg.det(W[:3, :3]))
    Rw = W[:3, :3] / s
    out = np.empty_like(c)
    out[:, :3, :3] = Rw[None] @ c[:, :3, :3]
    out[:, :3, 3] = c[:, :3, 3] @ W[:3, :3].T + W[:3, 3]
    return out


def to_file_frame(world_transform, c2w_scene) -> np.ndarray:
    """Map poses from the normalised scene frame back to the dataset file's frame (inverse of
    ``SceneData.world_transform``, a similarity x_scene = W [x_file, 1]): :func:`transform_poses` with the inverse
    similarity [M^-1 | -M^-1 b]."""
    W = np.asarray(world_transform, dtype=np.float64)[:3, :4]
    M_inv = np.linalg.inv(W[:, :3])
    return transform_poses(np.concatenate([M_inv, -(M_inv @ W[:, 3])[:, None]], 1), c2w_scene)
