"""Scores of open-vocabulary segmentations against labelled ground truth: 3D points against a labelled mesh, 2D
masks against label images."""
from __future__ import annotations

import numpy as np


def nearest_face_labels(points: np.ndarray, vertices: np.ndarray, triangles: np.ndarray, face_class: np.ndarray,
                        tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """(class id of the nearest ground-truth face [N], distance to it [N]) of every point; class 0 where that face is
    farther than ``tolerance`` (the point is not on any labelled surface). Exact point-to-triangle distances
    (Open3D's RaycastingScene)."""
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(np.asarray(vertices, np.float32)),
                        o3d.core.Tensor(np.asarray(triangles, np.uint32)))
    q = o3d.core.Tensor(np.asarray(points, np.float32).reshape(-1, 3))
    res = scene.compute_closest_points(q)
    prim = res["primitive_ids"].numpy().astype(np.int64)
    dist = np.linalg.norm(res["points"].numpy() - q.numpy(), axis=1)
    labels = np.asarray(face_class)[np.clip(prim, 0, len(face_class) - 1)].astype(np.int64)
    labels[(dist > tolerance) | (prim < 0)] = 0
    return labels, dist


def iou(pred: np.ndarray, truth: np.ndarray) -> float | None:
    """Intersection over union of two boolean masks; None when the truth is empty (the class is absent there: the
    mean IoU is over the classes present, as usual)."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if not truth.any():
        return None
    return float((pred & truth).sum()) / int((pred | truth).sum())


def mean_iou(values) -> float | None:
    """Mean of the defined IoUs (classes present in the ground truth)."""
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def projected_labels(view: np.ndarray, pixel: np.ndarray, label_images: list[np.ndarray]) -> np.ndarray:
    """Class id of the pixel each 3D point was cast from (``view`` [N] indices into ``label_images``, ``pixel``
    [N,2] (x, y)): the ground truth of what the camera saw along that ray, whatever depth the map put it at. Scores
    against these measure the lifting of semantics into the map, free of its geometric error (which scores against
    the mesh labels include)."""
    out = np.zeros(len(view), dtype=np.int64)
    for v in np.unique(view):
        sel = view == v
        lab = label_images[int(v)]
        x = np.clip(pixel[sel, 0].astype(np.int64), 0, lab.shape[1] - 1)
        y = np.clip(pixel[sel, 1].astype(np.int64), 0, lab.shape[0] - 1)
        out[sel] = lab[y, x]
    return out
