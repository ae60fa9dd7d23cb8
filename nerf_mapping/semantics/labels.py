"""Class labels of labelled captures (the demo scene): ``labels.json`` (id -> class name) and per-frame label images
(``semantic_file_path`` in transforms.json: uint8 class id per pixel, 0 = unknown)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def class_names(data) -> dict[int, str]:
    """{class id: name} of a loaded nerfstudio capture with a ``labels`` file (ValueError when it has none)."""
    meta = getattr(data, "metadata", {}) or {}
    if "labels" not in meta or "transforms_path" not in meta:
        raise ValueError("the capture has no class labels (transforms.json 'labels' -> labels.json)")
    path = Path(meta["transforms_path"]).parent / str(meta["labels"])
    return {int(k): str(v) for k, v in json.loads(path.read_text()).items()}


def label_images(data) -> list[np.ndarray]:
    """uint8 [H,W] class ids of every frame of ``data`` at its image size (nearest-neighbour subsampling)."""
    from PIL import Image

    meta = data.metadata
    tf_path = Path(meta["transforms_path"])
    frames = json.loads(tf_path.read_text())["frames"]
    out = []
    for i, fi in enumerate(data.frame_indices):
        rel = frames[fi].get("semantic_file_path")
        if not rel:
            raise ValueError(f"{tf_path}: frame {fi} has no semantic_file_path")
        h, w = data.images[i].shape[:2]
        out.append(fit_labels(np.asarray(Image.open(tf_path.parent / rel)), w, h))
    return out


def fit_labels(labels: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 class ids resized to ``width`` x ``height`` by nearest pixel centre (labels are never interpolated)."""
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"a label image must be [H,W] class ids, got shape {lab.shape}")
    if lab.shape == (height, width):
        return np.ascontiguousarray(lab, dtype=np.uint8)
    ys = ((np.arange(height) + 0.5) * lab.shape[0] / height).astype(int).clip(0, lab.shape[0] - 1)
    xs = ((np.arange(width) + 0.5) * lab.shape[1] / width).astype(int).clip(0, lab.shape[1] - 1)
    return np.ascontiguousarray(lab[ys][:, xs], dtype=np.uint8)
