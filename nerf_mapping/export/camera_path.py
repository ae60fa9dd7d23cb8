"""Camera paths (nerfstudio ``camera_path.json``), generated trajectories, and video writing.

Poses in a camera path are camera-to-world in OpenGL axes, in the trained model's scene frame (as nerfstudio's
``ns-render camera-path`` expects them).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from nerf_mapping.cameras import CAMERA_MODELS, Cameras


def load_camera_path(path: Path) -> tuple[Cameras, float]:
    """Read a nerfstudio camera_path.json -> (Cameras [N], fps). Supports perspective cameras (fov = vertical, deg)."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read camera path: {e}") from e
    for key in ("render_height", "render_width", "camera_path"):
        if key not in d:
            raise ValueError(f"{path}: missing field '{key}'")
    if d.get("camera_type", "perspective") != "perspective":
        raise ValueError(f"{path}: camera_type '{d.get('camera_type')}' is not supported (only 'perspective')")
    h, w = int(d["render_height"]), int(d["render_width"])
    if h <= 0 or w <= 0 or h * w > 8192 * 8192:
        raise ValueError(f"{path}: render size {w}x{h} is invalid")
    c2ws, fys = [], []
    for i, cam in enumerate(d["camera_path"]):
        try:
            m = np.asarray(cam["camera_to_world"], dtype=np.float64).reshape(4, 4)
            fov = float(cam["fov"])
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"{path}: camera_path[{i}]: needs camera_to_world (16 numbers) and fov: {e}") from e
        if not np.isfinite(m).all() or not 0 < fov < 180:
            raise ValueError(f"{path}: camera_path[{i}]: non-finite matrix or fov out of (0, 180)")
        c2ws.append(m[:3])
        fys.append(0.5 * h / math.tan(math.radians(fov) / 2))
    if not c2ws:
        raise ValueError(f"{path}: camera_path is empty")
    n = len(c2ws)
    f = torch.tensor(fys, dtype=torch.float32)
    cams = Cameras(
        c2w=torch.tensor(np.stack(c2ws), dtype=torch.float32), fx=f, fy=f.clone(),
        cx=torch.full((n,), w / 2.0), cy=torch.full((n,), h / 2.0),
        width=torch.full((n,), w, dtype=torch.long), height=torch.full((n,), h, dtype=torch.long),
        distortion=torch.zeros(n, 6), model=torch.full((n,), CAMERA_MODELS.index("PINHOLE"), dtype=torch.long),
    )
    return cams, float(d.get("fps", 24))


def write_camera_path(path: Path, cameras: Cameras, fps: float = 24.0) -> None:
    """Write Cameras (PINHOLE) as a nerfstudio camera_path.json."""
    w, h = int(cameras.width[0]), int(cameras.height[0])
    entries = []
    for i in range(len(cameras)):
        m = torch.eye(4)
        m[:3] = cameras.c2w[i]
        fov = math.degrees(2 * math.atan(0.5 * h / float(cameras.fy[i])))
        entries.append({"camera_to_world": m.reshape(-1).tolist(), "fov": fov, "aspect": w / h})
    Path(path).write_text(json.dumps({
        "camera_type": "perspective", "render_height": h, "render_width": w, "fps": fps,
        "seconds": len(cameras) / fps, "camera_path": entries,
    }, indent=1))


def _look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """OpenGL camera-to-world [3,4] looking from eye at target (camera -Z towards target)."""
    back = eye - target
    back /= np.linalg.norm(back)
    right = np.cross(up, back)
    if np.linalg.norm(right) < 1e-6:
        right = np.cross(np.array([1.0, 0, 0]), back)
    right /= np.linalg.norm(right)
    cam_up = np.cross(back, right)
    return np.stack([right, cam_up, back, eye], axis=1)


def generate_trajectory(kind: str, train_c2w: torch.Tensor, n_frames: int = 120) -> torch.Tensor:
    """'spiral': a spiral around the training cameras' focus; 'interpolate': smooth through the training poses.

    Returns [n_frames, 3, 4] camera-to-world.
    """
    from nerf_mapping.geometry import focus_point, interpolate_se3

    c2w = train_c2w.double().numpy()
    if kind == "interpolate":
        keys = c2w
        if len(keys) < 2:
            raise ValueError("interpolate needs at least two training poses")
        out = []
        for s in np.linspace(0, len(keys) - 1, n_frames):
            i = min(int(s), len(keys) - 2)
            a = s - i
            t0 = np.eye(4)
            t0[:3] = keys[i]
            t1 = np.eye(4)
            t1[:3] = keys[i + 1]
            out.append(interpolate_se3(t0, t1, a)[:3])
        return torch.tensor(np.stack(out), dtype=torch.float32)
    if kind != "spiral":
        raise ValueError(f"unknown trajectory '{kind}' (spiral|interpolate)")
    centers = c2w[:, :3, 3]
    target = np.asarray(focus_point(torch.tensor(c2w, dtype=torch.float32)), dtype=np.float64).reshape(3)
    up = c2w[:, :3, 1].mean(0)  # mean camera up (OpenGL +Y)
    up /= np.linalg.norm(up)
    radius = np.median(np.linalg.norm(centers - target, axis=1))
    # Orthonormal basis of the plane perpendicular to up.
    a = np.cross(up, [1.0, 0, 0])
    if np.linalg.norm(a) < 1e-3:
        a = np.cross(up, [0, 1.0, 0])
    a /= np.linalg.norm(a)
    b = np.cross(up, a)
    mean_h = float(np.mean((centers - target) @ up))
    out = []
    for k in range(n_frames):
        th = 2 * math.pi * k / n_frames
        hgt = mean_h + 0.15 * radius * math.sin(2 * th)
        r = math.sqrt(max(radius**2 - hgt**2, (0.3 * radius) ** 2))
        eye = target + r * (math.cos(th) * a + math.sin(th) * b) + hgt * up
        out.append(_look_at(eye, target, up))
    return torch.tensor(np.stack(out), dtype=torch.float32)


def write_video(path: Path, frames, fps: float = 24.0) -> None:
    """Encode an iterable of uint8 [H,W,3] frames to H.264 mp4 with imageio-ffmpeg's bundled ffmpeg."""
    import imageio_ffmpeg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    try:
        for fr in frames:
            fr = np.ascontiguousarray(fr)
            if writer is None:
                h, w = fr.shape[:2]
                writer = imageio_ffmpeg.write_frames(
                    str(path), (w, h), fps=fps, codec="libx264", quality=8, macro_block_size=2)
                writer.send(None)
            writer.send(fr)
    finally:
        if writer is not None:
            writer.close()
