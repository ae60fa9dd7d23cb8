"""DTU in IDR / NeuS form: ``image/*.png``, ``mask/*.png``, ``cameras_sphere.npz`` (``world_mat_i``, ``scale_mat_i``).

``P_i = world_mat_i @ scale_mat_i`` projects normalised-scene points (object inside the unit sphere) to pixels of the
*original* 1600x1200 images; we RQ-decompose it into K [R | t] with numpy (no OpenCV), convert the OpenCV camera axes
to OpenGL, and rescale K to the images actually on disk (the ratio is detected from the principal point, so any
integer box-downscale of the originals works; see PROVENANCE.txt of the shared copy).

The scene frame is the NeuS normalised frame: x_scene = scale_mat^-1 x_dtu, so ``world_transform = inv(scale_mat)``
and ``world_scale = 1 / scale_mat[0, 0]`` (DTU millimetres -> scene units); ``metadata["dtu_scale_mat"]`` keeps the
4x4 matrix for millimetre error reporting. Bounded, scene box [-1, 1]^3. Split: every ``test_every``-th image is test.
"""

from __future__ import annotations

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
    load_frames,
    split_indices,
    subsample,
)

DEFAULT_CAMERA_FILES = ("cameras_sphere.npz", "cameras.npz")
IMAGE_DIRS = ("image", "images")
MASK_DIRS = ("mask", "masks")
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
# Largest relative deviation of the principal point from the image centre we accept when inferring the ratio
# between the calibrated and the on-disk resolution (DTU's is ~3%).
_PP_TOL = 0.2


def decompose_projection(P: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RQ-decompose a 3x4 projection P ~ K [R | t] (numpy only).

    Returns K [3,3] (upper triangular, positive diagonal, K[2,2] = 1), R [3,3] world-to-camera rotation (det +1),
    C [3] camera centre in world coordinates. Raises ValueError if P is singular.
    """
    P = np.asarray(P, dtype=np.float64)[:3, :4]
    M = P[:, :3]
    det = np.linalg.det(M)
    if not np.isfinite(det) or abs(det) < 1e-12 * max(1.0, np.abs(M).max() ** 3):
        raise ValueError("projection matrix has a singular 3x3 part")
    if det < 0:  # P and -P are the same projective camera; pick the sign that gives det(R) = +1
        P, M = -P, -M
    # RQ via QR of the row-reversed transpose: with E the anti-identity, E M^T = Q' R'  =>  M = (E R'^T E)(E Q'^T).
    q, r = np.linalg.qr(np.flipud(M).T)
    K = np.flipud(np.fliplr(r.T))
    R = np.flipud(q.T)
    S = np.diag(np.sign(np.diag(K)))  # make K's diagonal positive (S^2 = I keeps K R unchanged)
    K, R = K @ S, S @ R
    C = -np.linalg.solve(M, P[:, 3])
    return K / K[2, 2], R, C


def _find_dir(root: Path, names: Sequence[str]) -> Path | None:
    for n in names:
        if (root / n).is_dir():
            return root / n
    return None


def _list_images(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."))


def infer_intrinsics_scale(K: np.ndarray, width: int, height: int, label: str) -> float:
    """Factor from the calibrated resolution to (width, height), from where the principal point sits.

    2*cx / width estimates (calibrated width / image width); it must be close to an integer k (or 1/k) and agree in x
    and y. Returns 1/k (or k).
    """
    rx, ry = 2.0 * K[0, 2] / width, 2.0 * K[1, 2] / height
    for r in (rx, ry):
        if not np.isfinite(r) or r <= 0:
            raise DataError(f"{label}: principal point ({K[0, 2]:.1f}, {K[1, 2]:.1f}) is not inside a "
                            f"{width}x{height} image or any integer scaling of it")
    if rx >= 1.0:
        k = round(rx)
        ok = k >= 1 and abs(rx / k - 1) < _PP_TOL and abs(ry / k - 1) < _PP_TOL
        scale = 1.0 / k
    else:
        k = round(1.0 / rx)
        ok = k >= 1 and abs(k * rx - 1) < _PP_TOL and abs(k * ry - 1) < _PP_TOL
        scale = float(k)
    if not ok:
        raise DataError(
            f"{label}: cannot relate the intrinsics (principal point {K[0, 2]:.1f}, {K[1, 2]:.1f}) to the "
            f"{width}x{height} images by an integer scale factor"
        )
    return scale


def load_dtu(
    path: Path | str,
    split: str = "train",
    downscale: int = 1,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    test_every: int = 8,
    max_frames: int | None = None,
    num_workers: int | None = None,
    cameras_file: str | Path | None = None,
    load_masks: bool = True,
) -> SceneData:
    """Load an IDR/NeuS DTU scan (``path``: the scan folder, or a cameras*.npz inside it)."""
    check_split(split)
    downscale = check_downscale(downscale)
    root = Path(path)
    if root.suffix == ".npz":
        root, cameras_file = root.parent, root.name
    if cameras_file is None:
        cam_path = next((root / f for f in DEFAULT_CAMERA_FILES if (root / f).is_file()), None)
        if cam_path is None:
            raise DataError(f"{root}: none of {', '.join(DEFAULT_CAMERA_FILES)} found")
    else:
        cam_path = Path(cameras_file)
        cam_path = cam_path if cam_path.is_absolute() else root / cam_path
        if not cam_path.is_file():
            raise DataError(f"{cam_path.name}: file not found in {cam_path.parent}")
    cname = cam_path.name

    img_dir = _find_dir(root, IMAGE_DIRS)
    if img_dir is None:
        raise DataError(f"{root}: no image/ folder")
    images = _list_images(img_dir)
    if not images:
        raise DataError(f"{img_dir}: no images")
    n = len(images)
    mask_dir = _find_dir(root, MASK_DIRS) if load_masks else None
    masks = _list_images(mask_dir) if mask_dir is not None else None
    if masks is not None and len(masks) != n:
        raise DataError(f"{mask_dir.name}/: {len(masks)} masks for {n} images in {img_dir.name}/")

    try:
        cams_npz = dict(np.load(cam_path))
    except Exception as e:  # noqa: BLE001 - any unreadable npz is a data error
        raise DataError(f"{cname}: cannot read ({e})") from None

    def mat(key: str) -> np.ndarray:
        if key not in cams_npz:
            raise DataError(f"{cname}: {key}: missing ({n} images need world_mat_0..{n - 1} and scale_mat_0..{n - 1})")
        m = np.asarray(cams_npz[key], dtype=np.float64)
        if m.shape not in ((4, 4), (3, 4)) or not np.all(np.isfinite(m)):
            raise DataError(f"{cname}: {key}: expected a finite 4x4 matrix, got shape {list(m.shape)}")
        return m

    w0, h0 = image_size(images[0])
    Ks, c2ws = [], []
    scale_mats = []
    for i in range(n):
        world, scale_m = mat(f"world_mat_{i}"), mat(f"scale_mat_{i}")
        if scale_m.shape != (4, 4):
            raise DataError(f"{cname}: scale_mat_{i}: expected 4x4, got {list(scale_m.shape)}")
        P = (world[:3, :4] @ scale_m)
        try:
            K, R, C = decompose_projection(P)
        except ValueError as e:
            raise DataError(f"{cname}: world_mat_{i}: {e}") from None
        w2c_rot_check = np.abs(R @ R.T - np.eye(3)).max()
        if w2c_rot_check > 1e-6:
            raise DataError(f"{cname}: world_mat_{i}: rotation from the decomposition is not orthonormal")
        c2w_cv = np.concatenate([R.T, C[:, None]], 1)
        c2ws.append(opencv_to_opengl(c2w_cv))
        Ks.append(K)
        scale_mats.append(scale_m)

    # intrinsics of the calibrated resolution -> the files on disk (the ratio is common to all cameras)
    k_scale = infer_intrinsics_scale(Ks[0], w0, h0, f"{cname}: world_mat_0")

    idx = subsample(split_indices(n, split, test_every), max_frames)
    if not idx:
        raise DataError(f"{root}: split '{split}' is empty ({n} frames, test_every={test_every})")
    records = [
        FrameRecord(images[i], f"{img_dir.name}/{images[i].name}", mask=masks[i] if masks is not None else None)
        for i in idx
    ]
    loaded = load_frames(records, downscale, background, num_workers=num_workers)

    fx, fy, cx, cy, skew_max = [], [], [], [], 0.0
    for i, lf in zip(idx, loaded):
        K = Ks[i] * k_scale
        sx, sy = lf.scale_xy
        fx.append(K[0, 0] * sx), fy.append(K[1, 1] * sy), cx.append(K[0, 2] * sx), cy.append(K[1, 2] * sy)
        skew_max = max(skew_max, abs(Ks[i][0, 1] / Ks[i][0, 0]))
    poses = np.stack(c2ws)
    cams = Cameras.create(
        c2w=torch.from_numpy(poses[idx]).float(),
        fx=fx, fy=fy, cx=cx, cy=cy,
        width=[lf.image.shape[1] for lf in loaded],
        height=[lf.image.shape[0] for lf in loaded],
        model="PINHOLE",
    )
    scale_mat = scale_mats[0]
    dist = np.linalg.norm(poses[:, :3, 3], axis=-1)
    return SceneData(
        cameras=cams,
        images=[lf.image for lf in loaded],
        image_paths=[r.image for r in records],
        frame_indices=list(idx),
        masks=[lf.mask for lf in loaded] if masks is not None else None,
        depths=None,
        scene_box=torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]),
        unbounded=False,
        near=float(max(0.05, dist.min() - 1.0)),
        far=float(dist.max() + 1.0),
        world_transform=torch.from_numpy(np.linalg.inv(scale_mat)[:3]).float(),
        world_scale=float(1.0 / scale_mat[0, 0]),
        format="dtu",
        metadata={
            "dtu_scale_mat": scale_mat,
            "cameras_file": cam_path,
            "intrinsics_scale": k_scale,
            "max_skew_ratio": skew_max,  # K[0,1]/K[0,0]; the pinhole model ignores the (tiny) skew
            "num_frames_total": n,
            "downscale": downscale,
        },
    )
