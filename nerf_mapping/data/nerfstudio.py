"""nerfstudio / instant-ngp ``transforms.json`` parser.

Supported (nerfstudio convention):
- ``camera_model``: PINHOLE / OPENCV / OPENCV_FISHEYE / EQUIRECTANGULAR (case-insensitive). When absent: OPENCV if any
  of k1, k2, p1, p2 is present (instant-ngp files have no camera_model), else PINHOLE.
- intrinsics ``fl_x fl_y cx cy w h k1 k2 k3 k4 p1 p2`` at top level or per frame. A field given per frame must be given
  for *every* frame (all-or-none, as nerfstudio requires); a per-frame value overrides the top-level one.
  Fallbacks: ``camera_angle_x`` / ``camera_angle_y`` (instant-ngp) for the focal, fl_y = fl_x, cx = w/2, cy = h/2,
  w/h from the image file.
- ``file_path``, ``depth_file_path`` (16-bit PNG in mm unless ``depth_unit_scale_factor`` (file value -> metres) is
  given; ``.npy`` in metres), ``mask_file_path`` (0 = ignore); ``transform_matrix`` camera-to-world, OpenGL axes.
- explicit splits via ``train_filenames`` / ``val_filenames`` / ``test_filenames`` (nerfstudio); otherwise every
  ``test_every``-th frame (after sorting by file_path, as nerfstudio does) is test (= val).
- downscale: ``images_N/`` (and ``masks_N/``, ``depths_N/``) folders when present, else area-resize on load.
- our extension: top-level ``"scene_box": [[xmin,ymin,zmin],[xmax,ymax,zmax]]`` -> bounded scene in the file's frame.
  Without it the capture is treated as unbounded and normalised (focus point at the origin, cameras within radius 1).
"""

from __future__ import annotations

import json
import math
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np
import torch

from ..cameras import CAMERA_MODELS, Cameras
from ..geometry import normalize_poses, transform_poses
from .base import (
    DataError,
    FrameRecord,
    SceneData,
    check_downscale,
    check_split,
    downscaled_path,
    image_size,
    load_frames,
    parse_pose,
    resolve_image,
    split_indices,
    subsample,
)

INTRINSIC_FIELDS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "k1", "k2", "k3", "k4", "p1", "p2")
DISTORTION_FIELDS = ("k1", "k2", "k3", "k4", "p1", "p2")  # nerfstudio order
UNBOUNDED_NEAR, UNBOUNDED_FAR = 0.05, 1e3


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with open(path, "r", encoding="utf-8") as f:
            meta = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path.name}: invalid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path.name}: top level must be a JSON object")
    return meta


def get_frames(meta: dict, name: str) -> list[dict]:
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise DataError(f"{name}: frames: missing or empty (expected a non-empty list of frames)")
    for i, fr in enumerate(frames):
        if not isinstance(fr, dict):
            raise DataError(f"{name}: frames[{i}]: expected an object, got {type(fr).__name__}")
        if "file_path" not in fr:
            raise DataError(f"{name}: frames[{i}].file_path: missing")
        if "transform_matrix" not in fr:
            raise DataError(f"{name}: frames[{i}].transform_matrix: missing")
    return frames


def _number(value, label: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{label}: expected a number, got {value!r}") from None
    if not math.isfinite(v):
        raise DataError(f"{label}: must be finite, got {value!r}")
    return v


def check_per_frame_fields(frames: list[dict], name: str, fields: Sequence[str] = INTRINSIC_FIELDS) -> set[str]:
    """All-or-none rule: returns the set of fields given per frame; DataError if only some frames give one."""
    per_frame = set()
    for key in fields:
        has = [key in fr for fr in frames]
        if any(has):
            if not all(has):
                first = has.index(True)
                missing = has.index(False)
                raise DataError(
                    f"{name}: frames[{missing}].{key}: missing, but frames[{first}] gives '{key}' per frame; a field "
                    f"given per frame must be given for every frame"
                )
            per_frame.add(key)
    return per_frame


def detect_camera_model(meta: dict, frames: list[dict], name: str) -> str:
    model = meta.get("camera_model")
    if model is None:
        dist_keys = ("k1", "k2", "p1", "p2")
        has_dist = any(k in meta for k in dist_keys) or any(k in fr for fr in frames for k in dist_keys)
        return "OPENCV" if has_dist else "PINHOLE"
    if not isinstance(model, str) or model.upper() not in CAMERA_MODELS:
        raise DataError(f"{name}: camera_model: unknown camera model {model!r}; expected one of {', '.join(CAMERA_MODELS)}")
    return model.upper()


def parse_scene_box(value, name: str) -> np.ndarray:
    try:
        box = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{name}: scene_box: expected [[xmin,ymin,zmin],[xmax,ymax,zmax]], got {value!r}") from None
    if box.shape != (2, 3):
        raise DataError(f"{name}: scene_box: expected shape [2, 3], got {list(box.shape)}")
    if not np.all(np.isfinite(box)) or not np.all(box[1] > box[0]):
        raise DataError(f"{name}: scene_box: needs finite values with max > min on every axis, got {box.tolist()}")
    return box


def _rel_key(p: str) -> str:
    """Normalise a file_path for matching split file lists ("./images/a.png" == "images/a.png")."""
    return str(PurePosixPath(str(p).replace("\\", "/")))


def load_nerfstudio(
    path: Path | str,
    split: str = "train",
    downscale: int = 1,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    test_every: int = 8,
    max_frames: int | None = None,
    num_workers: int | None = None,
    load_depths: bool = True,
    load_masks: bool = True,
) -> SceneData:
    """Load a nerfstudio / instant-ngp capture (``path``: the folder or its transforms.json)."""
    check_split(split)
    downscale = check_downscale(downscale)
    path = Path(path)
    json_path = path if path.suffix == ".json" else path / "transforms.json"
    name = json_path.name
    data_dir = json_path.parent
    meta = read_json(json_path)
    raw_frames = get_frames(meta, name)
    per_frame = check_per_frame_fields(raw_frames, name)
    model = detect_camera_model(meta, raw_frames, name)
    check_per_frame_fields(raw_frames, name, ("depth_file_path", "mask_file_path"))

    # nerfstudio sorts frames by file name; keep the original index for error messages.
    order = sorted(range(len(raw_frames)), key=lambda i: str(raw_frames[i]["file_path"]))
    frames = [raw_frames[i] for i in order]
    labels = [f"{name}: frames[{i}]" for i in order]

    poses = np.stack([parse_pose(fr["transform_matrix"], f"{lab}.transform_matrix") for fr, lab in zip(frames, labels)])

    # ---- split
    split_keys = {s: f"{s}_filenames" for s in ("train", "val", "test")}
    if any(k in meta for k in split_keys.values()) and split != "all":
        key = split_keys[split]
        if key not in meta:
            raise DataError(f"{name}: {key}: missing (the file defines explicit splits but not '{split}')")
        wanted = {_rel_key(p) for p in meta[key]}
        idx = [i for i, fr in enumerate(frames) if _rel_key(fr["file_path"]) in wanted]
        found = {_rel_key(frames[i]["file_path"]) for i in idx}
        missing = sorted(wanted - found)
        if missing:
            raise DataError(f"{name}: {key}: {len(missing)} file(s) not among the frames, e.g. {missing[0]!r}")
    else:
        idx = split_indices(len(frames), split, test_every)
    if not idx:
        raise DataError(f"{name}: split '{split}' is empty ({len(frames)} frames, test_every={test_every})")
    idx = subsample(idx, max_frames)

    # ---- scene frame: normalisation uses *all* frames so every split shares one scene frame
    if "scene_box" in meta:
        box = parse_scene_box(meta["scene_box"], name)
        world_T, world_scale = np.concatenate([np.eye(3), np.zeros((3, 1))], 1), 1.0
        unbounded = False
        corners = np.array([[box[i, 0], box[j, 1], box[k, 2]] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
        far = float(np.linalg.norm(poses[:, None, :3, 3] - corners[None], axis=-1).max()) * 1.1
        near = min(0.05, 0.01 * far)
    else:
        world_T, world_scale = normalize_poses(poses, radius=1.0)
        box = np.array([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
        unbounded, near, far = True, UNBOUNDED_NEAR, UNBOUNDED_FAR
    scene_poses = transform_poses(world_T, poses)

    # ---- per-frame intrinsics (full resolution) and what to load
    def field(fr: dict, lab: str, key: str):
        if key in per_frame:
            return _number(fr[key], f"{lab}.{key}")
        if key in meta:
            return _number(meta[key], f"{name}: {key}")
        return None

    depth_scale = _number(meta.get("depth_unit_scale_factor", 1e-3), f"{name}: depth_unit_scale_factor")
    records, intr = [], []
    for i in idx:
        fr, lab = frames[i], labels[i]
        rel = str(fr["file_path"])
        img_ds = downscaled_path(data_dir, rel, downscale)
        img = resolve_image(data_dir, rel, f"{lab}.file_path") if img_ds is None else data_dir / rel
        w, h = field(fr, lab, "w"), field(fr, lab, "h")
        if w is None or h is None:
            if img_ds is None:
                fw, fh = image_size(img)
            else:
                fw, fh = (s * downscale for s in image_size(img_ds))
            w = fw if w is None else w
            h = fh if h is None else h
        fx, fy = field(fr, lab, "fl_x"), field(fr, lab, "fl_y")
        if fx is None and "camera_angle_x" in meta:
            fx = 0.5 * w / math.tan(0.5 * _number(meta["camera_angle_x"], f"{name}: camera_angle_x"))
        if fy is None and "camera_angle_y" in meta:
            fy = 0.5 * h / math.tan(0.5 * _number(meta["camera_angle_y"], f"{name}: camera_angle_y"))
        if fx is None and fy is not None:
            fx = fy
        if fy is None:
            fy = fx
        if fx is None and model != "EQUIRECTANGULAR":
            raise DataError(f"{lab}.fl_x: missing (give fl_x/fl_y at top level or per frame, or camera_angle_x)")
        if fx is None:  # equirectangular ignores focal; keep something sensible
            fx = fy = w / (2.0 * math.pi)
        if fx <= 0 or fy <= 0:
            raise DataError(f"{lab}.fl_x: focal lengths must be positive, got fl_x={fx}, fl_y={fy}")
        cx, cy = field(fr, lab, "cx"), field(fr, lab, "cy")
        cx = 0.5 * w if cx is None else cx
        cy = 0.5 * h if cy is None else cy
        dist = [field(fr, lab, k) or 0.0 for k in DISTORTION_FIELDS]
        intr.append((fx, fy, cx, cy, dist))

        mask = mask_ds = depth = depth_ds = None
        if load_masks and "mask_file_path" in fr:
            mask = data_dir / str(fr["mask_file_path"])
            mask_ds = downscaled_path(data_dir, str(fr["mask_file_path"]), downscale)
        if load_depths and "depth_file_path" in fr:
            depth = data_dir / str(fr["depth_file_path"])
            depth_ds = downscaled_path(data_dir, str(fr["depth_file_path"]), downscale)
        records.append(FrameRecord(img, lab, (int(round(w)), int(round(h))), img_ds, mask, mask_ds, depth, depth_ds))

    loaded = load_frames(records, downscale, background, depth_scale, world_scale, num_workers)

    fx, fy, cx, cy, dist = [], [], [], [], []
    for (ffx, ffy, fcx, fcy, fd), lf in zip(intr, loaded):
        sx, sy = lf.scale_xy
        fx.append(ffx * sx), fy.append(ffy * sy), cx.append(fcx * sx), cy.append(fcy * sy), dist.append(fd)
    cams = Cameras.create(
        c2w=torch.from_numpy(scene_poses[idx]).float(),
        fx=fx, fy=fy, cx=cx, cy=cy,
        width=[lf.image.shape[1] for lf in loaded],
        height=[lf.image.shape[0] for lf in loaded],
        distortion=dist,
        model=model,
    )
    has_masks = any(lf.mask is not None for lf in loaded)
    has_depths = any(lf.depth is not None for lf in loaded)
    metadata = {
        "camera_model": model,
        "transforms_path": json_path,
        "num_frames_total": len(frames),
        "downscale": downscale,
    }
    for key in ("aabb_scale", "applied_transform", "labels"):
        if key in meta:
            metadata[key] = meta[key]
    if "scene_box" not in meta:
        metadata["focus_point"] = -world_T[:, 3] / world_scale
    return SceneData(
        cameras=cams,
        images=[lf.image for lf in loaded],
        image_paths=[r.image_ds if r.image_ds is not None else r.image for r in records],
        frame_indices=list(idx),
        masks=[lf.mask for lf in loaded] if has_masks else None,
        depths=[lf.depth for lf in loaded] if has_depths else None,
        scene_box=torch.tensor(box, dtype=torch.float32),
        unbounded=unbounded,
        near=float(near),
        far=float(far),
        world_transform=torch.tensor(world_T, dtype=torch.float32),
        world_scale=float(world_scale),
        format="nerfstudio",
        metadata=metadata,
    )
