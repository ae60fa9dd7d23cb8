"""SceneData container, DataError and the shared loading helpers (splits, image / mask / depth IO, resizing).

Images are decoded with Pillow in a thread pool (decoding releases the GIL) and downscaled with area averaging
(PIL's BOX filter = exact area average for any factor). RGBA images are composited on the background *before*
resizing, which is equivalent to averaging premultiplied colour (no dark fringes at alpha edges).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..cameras import Cameras

SPLITS = ("train", "val", "test", "all")


class DataError(ValueError):
    """Malformed or missing input data; the message names the file and the field (``file: field: problem``)."""


@dataclass
class SceneData:
    """A loaded (split of a) dataset, in the normalised scene frame. See docs/CONTRACTS.md."""

    cameras: Cameras
    images: list[Tensor]  # uint8 [H, W, 3]
    image_paths: list[Path]
    frame_indices: list[int]  # index of each frame in the full (unsplit) dataset
    masks: list[Tensor] | None  # bool [H, W]
    depths: list[Tensor] | None  # float32 [H, W] scene units, 0 invalid
    scene_box: Tensor  # [2, 3]
    unbounded: bool
    near: float
    far: float
    world_transform: Tensor  # [3, 4]: x_scene = world_transform @ [x_file, 1]
    world_scale: float
    format: str
    metadata: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)


# ====================================================================== splits
def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def split_indices(n: int, split: str, test_every: int = 8) -> list[int]:
    """Every-N-th split used by formats without explicit splits: test (= val) are indices with i % N == 0."""
    check_split(split)
    if split == "all":
        return list(range(n))
    if test_every <= 0:
        raise ValueError(f"test_every must be positive, got {test_every}")
    if split in ("test", "val"):
        return [i for i in range(n) if i % test_every == 0]
    return [i for i in range(n) if i % test_every != 0]


def subsample(indices: Sequence[int], max_frames: int | None) -> list[int]:
    """Evenly subsample to at most ``max_frames`` (first and last kept)."""
    indices = list(indices)
    if max_frames is None or len(indices) <= max_frames:
        return indices
    if max_frames <= 0:
        raise ValueError(f"max_frames must be positive, got {max_frames}")
    pos = np.unique(np.round(np.linspace(0, len(indices) - 1, max_frames)).astype(int))
    return [indices[i] for i in pos]


# ====================================================================== image IO
def parallel_map(fn: Callable, items: Sequence, num_workers: int | None = None) -> list:
    items = list(items)
    if num_workers is None:
        num_workers = min(8, 2 * (os.cpu_count() or 1))
    if num_workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=num_workers) as ex:
        return list(ex.map(fn, items))


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header only."""
    with Image.open(path) as im:
        return im.size


def target_size(width: int, height: int, downscale: float) -> tuple[int, int]:
    """Size after downscaling by ``downscale`` (rounded, at least 1)."""
    return max(1, int(round(width / downscale))), max(1, int(round(height / downscale)))


def load_rgb(path: Path, size: tuple[int, int] | None, background: Sequence[float]) -> Tensor:
    """Decode an image to uint8 [H, W, 3], compositing alpha on ``background`` (RGB floats in [0,1]) and
    area-resizing to ``size`` = (W, H) when it differs from the file's size."""
    with Image.open(path) as im:
        im.load()
        has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
        if has_alpha:
            arr = np.asarray(im.convert("RGBA"), dtype=np.float32) * (1.0 / 255.0)
            bg = np.asarray(background, dtype=np.float32).reshape(1, 1, 3)
            a = arr[..., 3:4]
            rgb = arr[..., :3] * a + bg * (1.0 - a)
            if size is not None and tuple(size) != im.size:
                # Resize the composited float image per channel (mode "F") to keep precision before quantising.
                rgb = np.stack(
                    [np.asarray(Image.fromarray(np.ascontiguousarray(rgb[..., c])).resize(tuple(size), Image.BOX))
                     for c in range(3)], -1)
            return torch.from_numpy(np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8))
        else:
            if im.mode != "RGB":
                im = im.convert("RGB")
            if size is not None and tuple(size) != im.size:
                im = im.resize(tuple(size), Image.BOX)
        return torch.from_numpy(np.array(im, dtype=np.uint8))


def load_mask(path: Path, size: tuple[int, int] | None) -> Tensor:
    """Mask image -> bool [H, W] (True = use). Multi-channel masks use the first channel; resizing area-averages
    and thresholds at 0.5, so a downscaled pixel is kept when most of its footprint was."""
    with Image.open(path) as im:
        im.load()
        if im.mode in ("RGB", "RGBA", "P", "LA"):
            im = im.convert("RGB").getchannel(0)
        elif im.mode not in ("L", "1"):
            arr = np.asarray(im)
            im = Image.fromarray(((arr > 0) * 255).astype(np.uint8), "L")
        if im.mode == "1":
            im = im.convert("L")
        if size is not None and tuple(size) != im.size:
            im = im.resize(tuple(size), Image.BOX)
        return torch.from_numpy(np.asarray(im) >= 128)


def load_depth(path: Path, size: tuple[int, int] | None, png_scale: float, scene_scale: float,
               invalid_raw: float | None = None) -> Tensor:
    """Depth map -> float32 [H, W] in scene units (0 = invalid).

    ``.npy``: metres (file units). Images (16-bit PNG): ``value * png_scale`` (nerfstudio's depth_unit_scale_factor,
    default 1e-3 = millimetres). ``scene_scale`` converts file units to scene units. ``invalid_raw``: a file value
    that also means "no return" besides 0 (Kinect/7-Scenes PNGs use 65535), dropped before scaling so it never reads
    as a 65 m surface. Resizing averages only the valid pixels of each footprint so holes do not drag depths towards 0.
    """
    if path.suffix.lower() == ".npy":
        d = np.load(path).astype(np.float32)
        if d.ndim == 3:
            d = d[..., 0]
    else:
        with Image.open(path) as im:
            d = np.asarray(im).astype(np.float32)
        if d.ndim == 3:
            d = d[..., 0]
        if invalid_raw is not None:
            d = np.where(d == np.float32(invalid_raw), np.float32(0.0), d)
        d = d * np.float32(png_scale)
    d = np.where(np.isfinite(d) & (d > 0), d, 0.0).astype(np.float32)
    if size is not None and (size[0], size[1]) != (d.shape[1], d.shape[0]):
        valid = (d > 0).astype(np.float32)
        num = np.asarray(Image.fromarray(d, "F").resize(tuple(size), Image.BOX))
        den = np.asarray(Image.fromarray(valid, "F").resize(tuple(size), Image.BOX))
        d = np.where(den > 1e-6, num / np.maximum(den, 1e-6), 0.0).astype(np.float32)
    return torch.from_numpy(d * np.float32(scene_scale))


@dataclass
class FrameRecord:
    """What to load for one frame. ``*_ds`` are pre-downscaled files (images_N/ layout) used as-is when present.

    size: declared full-resolution (W, H) or None to take it from the file; label: e.g. "transforms.json: frames[3]"
    for error messages.
    """

    image: Path
    label: str
    size: tuple[int, int] | None = None
    image_ds: Path | None = None
    mask: Path | None = None
    mask_ds: Path | None = None
    depth: Path | None = None
    depth_ds: Path | None = None


@dataclass
class LoadedFrame:
    image: Tensor  # uint8 [h, w, 3]
    full_size: tuple[int, int]  # (W, H) of the full-resolution camera the intrinsics refer to
    mask: Tensor | None = None
    depth: Tensor | None = None

    @property
    def scale_xy(self) -> tuple[float, float]:
        """Per-axis factor from full-resolution intrinsics to the loaded image."""
        h, w = self.image.shape[:2]
        return w / self.full_size[0], h / self.full_size[1]


def load_frame(
    rec: FrameRecord,
    downscale: int,
    background: Sequence[float],
    depth_png_scale: float = 1e-3,
    depth_scene_scale: float = 1.0,
    depth_invalid_raw: float | None = None,
) -> LoadedFrame:
    """Load image (+ mask, depth) of one frame at 1/downscale resolution; see :class:`FrameRecord` and
    :func:`load_depth` for the depth arguments."""
    if rec.image_ds is not None:
        img = load_rgb(rec.image_ds, None, background)
        h, w = img.shape[:2]
        full = rec.size if rec.size is not None else (w * downscale, h * downscale)
    else:
        if not rec.image.is_file():
            raise DataError(f"{rec.label}: image file not found: {rec.image}")
        full = image_size(rec.image)
        if rec.size is not None and tuple(rec.size) != tuple(full):
            raise DataError(
                f"{rec.label}: image {rec.image.name} is {full[0]}x{full[1]} but the camera says "
                f"w x h = {rec.size[0]}x{rec.size[1]}"
            )
        img = load_rgb(rec.image, target_size(full[0], full[1], downscale), background)
    size = (img.shape[1], img.shape[0])
    mask = depth = None
    if rec.mask is not None or rec.mask_ds is not None:
        mp = rec.mask_ds if rec.mask_ds is not None else rec.mask
        if not mp.is_file():
            raise DataError(f"{rec.label}: mask file not found: {mp}")
        mask = load_mask(mp, size)
    if rec.depth is not None or rec.depth_ds is not None:
        dp = rec.depth_ds if rec.depth_ds is not None else rec.depth
        if not dp.is_file():
            raise DataError(f"{rec.label}: depth file not found: {dp}")
        depth = load_depth(dp, size, depth_png_scale, depth_scene_scale, depth_invalid_raw)
    return LoadedFrame(img, (int(full[0]), int(full[1])), mask, depth)


def load_frames(records: Sequence[FrameRecord], downscale: int, background: Sequence[float],
                depth_png_scale: float = 1e-3, depth_scene_scale: float = 1.0,
                num_workers: int | None = None, depth_invalid_raw: float | None = None) -> list[LoadedFrame]:
    """Load many frames in a thread pool (order preserved). Missing files raise DataError before any decoding."""
    for rec in records:
        if rec.image_ds is None and not rec.image.is_file():
            raise DataError(f"{rec.label}: image file not found: {rec.image}")
    return parallel_map(
        lambda r: load_frame(r, downscale, background, depth_png_scale, depth_scene_scale, depth_invalid_raw),
        records, num_workers
    )


def resolve_image(data_dir: Path, rel: str, label: str) -> Path:
    """data_dir / rel; Blender-style paths without extension get ``.png``. DataError names the frame if missing."""
    p = (data_dir / rel)
    if p.is_file():
        return p
    if p.suffix == "" or not p.suffix[1:].isalpha():
        for ext in (".png", ".jpg", ".jpeg", ".PNG", ".JPG"):
            q = p.with_name(p.name + ext)
            if q.is_file():
                return q
    raise DataError(f"{label}: image file not found: {p}")


def check_downscale(downscale) -> int:
    d = int(downscale)
    if d != downscale or d < 1:
        raise ValueError(f"downscale must be a positive integer, got {downscale!r}")
    return d


def downscaled_path(data_dir: Path, rel: str, downscale: int) -> Path | None:
    """nerfstudio's pre-downscaled layout: ``images/x.png`` -> ``images_N/x.png`` (first folder suffixed with _N).
    Returns the path when it exists, else None."""
    if downscale == 1:
        return None
    p = Path(rel)
    parts = p.parts
    while parts and parts[0] in (".",):
        parts = parts[1:]
    if len(parts) >= 2:
        cand = data_dir.joinpath(f"{parts[0]}_{downscale}", *parts[1:])
        if cand.is_file():
            return cand
    return None


# ====================================================================== poses
RIGID_TOL = 1e-2  # looser than float32 noise, far tighter than any real scale/shear error; small errors are re-orthonormalised


def parse_pose(value, label: str) -> np.ndarray:
    """Validate a camera-to-world matrix (4x4 or 3x4 nested list / array) -> float64 [3, 4] with an exactly
    orthonormal rotation. DataError names ``label`` (e.g. "transforms.json: frames[3].transform_matrix")."""
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DataError(f"{label}: not a numeric matrix ({e})") from None
    if m.shape not in ((4, 4), (3, 4)):
        raise DataError(f"{label}: expected a 4x4 or 3x4 matrix, got shape {list(m.shape)}")
    if not np.all(np.isfinite(m)):
        raise DataError(f"{label}: contains non-finite values (nan/inf)")
    if m.shape == (4, 4) and not np.allclose(m[3], [0, 0, 0, 1], atol=1e-6):
        raise DataError(f"{label}: last row must be [0, 0, 0, 1], got {m[3].tolist()}")
    R = m[:3, :3]
    det = float(np.linalg.det(R))
    if det < 0:
        raise DataError(f"{label}: rotation part has determinant {det:.4g} (a reflection, not a rotation)")
    err = float(np.abs(R.T @ R - np.eye(3)).max())
    if err > RIGID_TOL:
        raise DataError(f"{label}: rotation part is not orthonormal (max |R^T R - I| = {err:.3g}; scale or shear?)")
    u, _, vt = np.linalg.svd(R)
    out = m[:3, :4].copy()
    out[:, :3] = u @ vt
    return out
