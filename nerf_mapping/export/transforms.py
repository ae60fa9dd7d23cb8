"""nerfstudio ``transforms.json`` export of camera poses (e.g. refined training poses, ``nerf-mapping poses export``)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


def export_transforms(path, c2w_file, intrinsics, sizes, file_paths=None, extra_meta: dict | None = None) -> Path:
    """Write a nerfstudio ``transforms.json`` with per-frame intrinsics and ``transform_matrix`` (OpenGL c2w, 4x4).

    c2w_file [N,3,4] in the dataset file's frame; intrinsics [N,4] (fx, fy, cx, cy); sizes [N,2] (w, h);
    file_paths: image paths (written relative to the json's folder), else ``images/frame_%05d.png`` placeholders.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    c = np.asarray(c2w_file, dtype=np.float64)
    K = np.asarray(intrinsics, dtype=np.float64)
    S = np.asarray(sizes).astype(int)
    frames = []
    for i in range(c.shape[0]):
        T = np.eye(4)
        T[:3, :4] = c[i]
        if file_paths is not None:
            fp = Path(file_paths[i])
            try:
                rel = os.path.relpath(fp.resolve(), path.parent.resolve())
            except ValueError:
                rel = str(fp.resolve())
        else:
            rel = f"images/frame_{i:05d}.png"
        frames.append({
            "file_path": rel, "transform_matrix": T.tolist(),
            "fl_x": float(K[i, 0]), "fl_y": float(K[i, 1]), "cx": float(K[i, 2]), "cy": float(K[i, 3]),
            "w": int(S[i, 0]), "h": int(S[i, 1]),
        })
    doc = {"camera_model": "OPENCV", "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0, "frames": frames}
    if extra_meta:
        doc["nerf_mapping"] = extra_meta
    path.write_text(json.dumps(doc, indent=2))
    return path
