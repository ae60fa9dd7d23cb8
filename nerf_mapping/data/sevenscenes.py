"""Microsoft 7-Scenes RGB-D captures (as redistributed by tsdf-fusion-python): one folder of
``frame-XXXXXX.color.jpg`` / ``frame-XXXXXX.depth.png`` / ``frame-XXXXXX.pose.txt`` plus ``camera-intrinsics.txt``.

- depth: 16-bit PNG in millimetres, z-depth along the optical axis; 0 and 65535 mean "no return".
- poses: 4x4 row-major camera-to-world in metres, OpenCV camera axes (converted to the model's OpenGL axes here).
- intrinsics: one 3x3 K for every frame (the Kinect depth camera's, at the files' resolution; no distortion).
- timing: no timestamp file; the capture is 30 Hz and the number in a file name is the capture frame, so frame ``i``
  was taken at ``i / 30`` s. ``metadata["timestamps_s"]`` holds that time for every loaded frame (a subsampled copy
  keeps its original numbers, so the times keep its real spacing).

The scene frame is the capture's own (KinectFusion's world, metres): ``world_transform`` identity, ``world_scale`` 1,
so poses, depths, near/far and depth errors all read in metres and a bag written from this data matches the files.
The hash grid does not need a centred box, so no recentring is done.

The capture is *bounded and inside-out*: a handheld camera moving through a kitchen. The scene box is what the depth
sees: every frame's depth back-projected (on a pixel lattice, all frames whatever the split, so that train and test
share one box), robust per-axis percentiles (:data:`BOX_PERCENTILE`; sensor speckle and flying pixels must not
stretch it), grown to hold every camera centre, plus a margin (:data:`BOX_MARGIN`). The cameras are then inside the
box, so :func:`nerf_mapping.config.presets.capture_kind` says ``"inside_out"`` and training gets the inside-out preset
(coarse occupancy grid refreshed often, cone marching), which fits rays that start inside the room and cross metres
of empty space; the object preset (fine marching, image-limited hash grid about an object the cameras orbit) does
not. ``near`` is half the nearest robust depth (nothing the sensor saw is closer; it keeps floaters from forming on
the lens), ``far`` the farthest box corner from any camera.

Caveat (PROVENANCE.txt): 7-Scenes never registered the colour camera to the depth camera; K and the poses are the
depth camera's and colour edges sit a few pixels off depth edges. The loader passes the data through unchanged.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from ..cameras import Cameras
from ..geometry import opencv_to_opengl
from .base import (
    DataError,
    FrameRecord,
    SceneData,
    check_downscale,
    check_split,
    image_size,
    load_depth,
    load_frames,
    parallel_map,
    parse_pose,
    split_indices,
    subsample,
)

INTRINSICS_FILE = "camera-intrinsics.txt"
COLOR_SUFFIX, DEPTH_SUFFIX, POSE_SUFFIX = ".color.jpg", ".depth.png", ".pose.txt"
FRAME_RE = re.compile(r"^frame-(\d+)\.color\.jpg$")
FRAME_RATE_HZ = 30.0
"""Kinect v1 frame rate: the number in a file name is the capture frame, so its time is number / 30 s."""
DEPTH_PNG_SCALE = 1e-3
"""Depth PNG value -> metres (millimetres)."""
DEPTH_INVALID_RAW = 65535
"""Depth PNG value that also means "no return" (besides 0)."""
BOX_STRIDE = 8
"""Pixel lattice step for the scene-box estimate: 4800 points per 640x480 frame are plenty for percentiles and
keep the estimate to one PNG decode per frame."""
BOX_PERCENTILE = 0.5
"""Per-axis percentile (and 100 - it) of the back-projected depth points that bound the scene box."""
BOX_MARGIN = 0.1
"""Margin on every side of the scene box, as a fraction of its longest side (the percentiles clip real but rarely
seen surfaces; the margin gives them room, and the field room to put them)."""
NEAR_PERCENTILE = 0.1
"""Percentile of all valid depths whose half is the near plane."""
MIN_NEAR = 0.05


def find_root(path: Path | str) -> Path | None:
    """The folder holding ``camera-intrinsics.txt`` and ``*.color.jpg``: ``path`` itself, its ``data/`` subfolder,
    or (given the intrinsics file) its folder. None when neither fits."""
    p = Path(path)
    if p.is_file():
        if p.name != INTRINSICS_FILE:
            return None
        p = p.parent
    for cand in (p, p / "data"):
        if (cand / INTRINSICS_FILE).is_file() and any(cand.glob("*" + COLOR_SUFFIX)):
            return cand
    return None


def read_intrinsics(path: Path) -> np.ndarray:
    """``camera-intrinsics.txt`` -> K [3, 3] float64 (pinhole: positive focals, last row [0, 0, 1])."""
    name = path.name
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        K = np.loadtxt(path, dtype=np.float64)
    except ValueError as e:
        raise DataError(f"{name}: K: not a matrix of numbers ({e})") from None
    if K.shape != (3, 3):
        raise DataError(f"{name}: K: expected a 3x3 matrix, got shape {list(K.shape)}")
    if not np.all(np.isfinite(K)):
        raise DataError(f"{name}: K: contains non-finite values")
    if not np.allclose(K[2], [0.0, 0.0, 1.0]) or K[1, 0] != 0.0:
        raise DataError(f"{name}: K: expected [[fx, s, cx], [0, fy, cy], [0, 0, 1]], got {K.tolist()}")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise DataError(f"{name}: K: focal lengths must be positive, got fx={K[0, 0]}, fy={K[1, 1]}")
    return K


def read_pose(path: Path) -> np.ndarray:
    """``frame-XXXXXX.pose.txt`` -> camera-to-world [3, 4] float64, OpenCV camera axes (validated rigid)."""
    name = path.name
    if not path.is_file():
        raise DataError(f"{name}: pose: file not found in {path.parent}")
    try:
        m = np.loadtxt(path, dtype=np.float64)
    except ValueError as e:
        raise DataError(f"{name}: pose: not a matrix of numbers ({e})") from None
    return parse_pose(m, f"{name}: pose")


def list_frames(root: Path) -> list[tuple[int, str]]:
    """(capture frame number, file stem ``frame-XXXXXX``) of every colour image, sorted by number."""
    frames = []
    for p in root.iterdir():
        m = FRAME_RE.match(p.name)
        if m:
            frames.append((int(m.group(1)), p.name[: -len(COLOR_SUFFIX)]))
    frames.sort()
    return frames


def read_depth(path: Path) -> np.ndarray:
    """A depth PNG at its own resolution as metres float32 [H, W], 0 where invalid (0 or 65535 in the file)."""
    if not path.is_file():
        raise DataError(f"{path.name}: depth: file not found in {path.parent}")
    return load_depth(path, None, DEPTH_PNG_SCALE, 1.0, DEPTH_INVALID_RAW).numpy()


def backproject(depth: np.ndarray, K: np.ndarray, c2w_cv: np.ndarray, stride: int = 1) -> np.ndarray:
    """World points [P, 3] of the valid pixels (on a ``stride`` lattice) of a z-depth map (metres, OpenCV axes,
    pixel centres at +0.5)."""
    d = depth[::stride, ::stride]
    v, u = np.nonzero(d > 0)
    z = d[v, u].astype(np.float64)
    x = ((u * stride + 0.5) - K[0, 2]) / K[0, 0] * z
    y = ((v * stride + 0.5) - K[1, 2]) / K[1, 1] * z
    pts = np.stack([x, y, z], -1)
    return pts @ c2w_cv[:, :3].T + c2w_cv[:, 3]


def scene_bounds(depth_paths: Sequence[Path], K: np.ndarray, c2w_cv: np.ndarray,
                 num_workers: int | None = None) -> dict:
    """Scene box, near and far from every frame's depth and camera (see the module docstring).

    Returns {"scene_box" [2, 3], "near", "far", "depth_valid_fraction", "depth_range_m" (robust min/max)}.
    """
    def one(i: int):
        d = read_depth(depth_paths[i])
        valid = d > 0
        pts = backproject(d, K, c2w_cv[i], BOX_STRIDE)
        return pts, d[::BOX_STRIDE, ::BOX_STRIDE][valid[::BOX_STRIDE, ::BOX_STRIDE]], float(valid.mean())

    per_frame = parallel_map(one, range(len(depth_paths)), num_workers)
    pts = np.concatenate([p for p, _, _ in per_frame])
    z = np.concatenate([z for _, z, _ in per_frame])
    if pts.shape[0] < 100:
        raise DataError(f"{depth_paths[0].parent}: depth: fewer than 100 valid depth samples over "
                        f"{len(depth_paths)} frames; cannot bound the scene")
    cams = c2w_cv[:, :, 3]
    lo = np.minimum(np.percentile(pts, BOX_PERCENTILE, axis=0), cams.min(0))
    hi = np.maximum(np.percentile(pts, 100.0 - BOX_PERCENTILE, axis=0), cams.max(0))
    margin = BOX_MARGIN * float((hi - lo).max())
    box = np.stack([lo - margin, hi + margin])
    corners = np.array([[box[i, 0], box[j, 1], box[k, 2]] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    far = float(np.linalg.norm(cams[:, None] - corners[None], axis=-1).max())
    near = max(MIN_NEAR, 0.5 * float(np.percentile(z, NEAR_PERCENTILE)))
    return {
        "scene_box": box,
        "near": near,
        "far": far,
        "depth_valid_fraction": float(np.mean([f for _, _, f in per_frame])),
        "depth_range_m": [float(np.percentile(z, BOX_PERCENTILE)), float(np.percentile(z, 100.0 - BOX_PERCENTILE))],
    }


def load_sevenscenes(
    path: Path | str,
    split: str = "train",
    downscale: int = 1,
    background: Sequence[float] = (1.0, 1.0, 1.0),  # unused: JPEGs have no alpha (kept for a uniform signature)
    test_every: int = 8,
    max_frames: int | None = None,
    num_workers: int | None = None,
    load_depths: bool = True,
) -> SceneData:
    """Load a 7-Scenes RGB-D capture (``path``: the folder, its ``data/`` parent, or camera-intrinsics.txt).

    Split: every ``test_every``-th frame (by capture number) is test (= val), the rest train. ``downscale``
    area-resizes colour and (valid-pixel averaged) depth on load. ``load_depths=False`` skips the depth of the split
    (the scene box still comes from the depth). DataError names the file and field of anything missing or malformed.
    """
    check_split(split)
    downscale = check_downscale(downscale)
    root = find_root(path)
    if root is None:
        raise DataError(f"{path}: not a 7-Scenes folder (looked for {INTRINSICS_FILE} and *{COLOR_SUFFIX} in it and "
                        f"in its data/ subfolder)")
    K = read_intrinsics(root / INTRINSICS_FILE)
    frames = list_frames(root)
    if not frames:
        raise DataError(f"{root}: no frame-XXXXXX{COLOR_SUFFIX} images")
    numbers = [num for num, _ in frames]
    poses_cv = np.stack([read_pose(root / (stem + POSE_SUFFIX)) for _, stem in frames])
    depth_paths = [root / (stem + DEPTH_SUFFIX) for _, stem in frames]
    for p in depth_paths:
        if not p.is_file():
            raise DataError(f"{p.name}: depth: file not found in {root}")
    bounds = scene_bounds(depth_paths, K, poses_cv, num_workers)

    n = len(frames)
    idx = subsample(split_indices(n, split, test_every), max_frames)
    if not idx:
        raise DataError(f"{root}: split '{split}' is empty ({n} frames, test_every={test_every})")
    full_size = image_size(root / (frames[0][1] + COLOR_SUFFIX))
    records = [
        FrameRecord(root / (frames[i][1] + COLOR_SUFFIX), f"{frames[i][1]}{COLOR_SUFFIX}", size=full_size,
                    depth=depth_paths[i] if load_depths else None)
        for i in idx
    ]
    loaded = load_frames(records, downscale, background, DEPTH_PNG_SCALE, 1.0, num_workers,
                         depth_invalid_raw=DEPTH_INVALID_RAW)

    fx, fy, cx, cy = [], [], [], []
    for lf in loaded:
        sx, sy = lf.scale_xy
        fx.append(K[0, 0] * sx), fy.append(K[1, 1] * sy), cx.append(K[0, 2] * sx), cy.append(K[1, 2] * sy)
    c2w = opencv_to_opengl(poses_cv[idx])
    cams = Cameras.create(
        c2w=torch.from_numpy(c2w).float(),
        fx=fx, fy=fy, cx=cx, cy=cy,
        width=[lf.image.shape[1] for lf in loaded],
        height=[lf.image.shape[0] for lf in loaded],
        model="PINHOLE",
    )
    return SceneData(
        cameras=cams,
        images=[lf.image for lf in loaded],
        image_paths=[r.image for r in records],
        frame_indices=list(idx),
        masks=None,
        depths=[lf.depth for lf in loaded] if load_depths else None,
        scene_box=torch.tensor(bounds["scene_box"], dtype=torch.float32),
        unbounded=False,
        near=bounds["near"],
        far=bounds["far"],
        world_transform=torch.tensor(np.concatenate([np.eye(3), np.zeros((3, 1))], 1), dtype=torch.float32),
        world_scale=1.0,
        format="7scenes",
        metadata={
            "timestamps_s": [numbers[i] / FRAME_RATE_HZ for i in idx],
            "capture_frames": [numbers[i] for i in idx],
            "frame_rate_hz": FRAME_RATE_HZ,
            "intrinsics": K,
            "intrinsics_path": root / INTRINSICS_FILE,
            "depth_valid_fraction": bounds["depth_valid_fraction"],
            "depth_range_m": bounds["depth_range_m"],
            "num_frames_total": n,
            "downscale": downscale,
        },
    )
