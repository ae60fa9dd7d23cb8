"""Mesh accuracy against a ground-truth mesh: Chamfer distance, precision / recall / F-score at distance thresholds.

Both surfaces are sampled uniformly by area (seeded, so a score repeats exactly); each sample's distance is its exact
point-to-triangle distance to the *other mesh* (Open3D's RaycastingScene), so the scores do not depend on how densely
the other side was sampled. Accuracy (precision) asks how close the reconstruction is to the truth, completeness
(recall) how much of the truth it covers; Chamfer is the mean of the two mean distances (the convention of Knapitsch
et al.'s Tanks and Temples F-score and of the SLAM mesh benchmarks).

A camera sees only part of a scene (the underside of a table, the back of a sofa against a wall): the truth can be
restricted to what the training views saw (:func:`visible_mask`, with the views' ground-truth depth maps, as the
NICE-SLAM / Co-SLAM evaluations cull their reference meshes), so that recall measures the mapping, not the capture.

:func:`score_reconstruction` is the one scoring recipe of ``benchmark mesh`` and of the ROS demo's ExportMesh check.
"""
from __future__ import annotations

import numpy as np
import torch

from nerf_mapping.cameras import Cameras, project


def sample_surface(vertices: np.ndarray, triangles: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """[n,3] points uniformly distributed over the triangles' area (a seeded generator: repeatable)."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(triangles, dtype=np.int64)
    if len(f) == 0:
        raise ValueError("the mesh has no triangles")
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    if not np.isfinite(area).all() or area.sum() <= 0:
        raise ValueError("the mesh has no area")
    rng = np.random.default_rng(seed)
    tri = rng.choice(len(f), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    return a[tri] * (1 - s)[:, None] + b[tri] * (s * (1 - r2))[:, None] + c[tri] * (s * r2)[:, None]


def point_mesh_distances(points: np.ndarray, vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """[N] exact distance from each point to the nearest triangle of the mesh."""
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(np.asarray(vertices, dtype=np.float32)),
                        o3d.core.Tensor(np.asarray(triangles, dtype=np.uint32)))
    return scene.compute_distance(o3d.core.Tensor(np.asarray(points, dtype=np.float32))).numpy().astype(np.float64)


@torch.no_grad()
def visible_mask(points: np.ndarray, cameras: Cameras, depths: list[torch.Tensor], tolerance: float = 0.03,
                 rel_tolerance: float = 0.02, chunk: int = 1 << 16) -> np.ndarray:
    """[N] bool: the point is seen by at least one camera, i.e. it projects inside the image in front of the camera
    and its z-depth matches the camera's ground-truth depth map (``depths[i]`` [H,W] z-depth, 0 = no hit) within
    ``tolerance + rel_tolerance * depth``."""
    pts = torch.as_tensor(np.asarray(points), dtype=torch.float32)
    seen = torch.zeros(pts.shape[0], dtype=torch.bool)
    for i in range(len(cameras)):
        R, t = cameras.c2w[i, :, :3], cameras.c2w[i, :, 3]
        d = depths[i]
        H, W = d.shape
        for s in range(0, pts.shape[0], chunk):
            pc = (pts[s:s + chunk] - t) @ R  # camera frame, OpenGL axes (z backwards)
            z = -pc[:, 2]
            front = z > 1e-6
            px, py = project(cameras, torch.full((pc.shape[0],), i, dtype=torch.long), pc)
            col, row = torch.floor(px).long(), torch.floor(py).long()
            inside = front & (col >= 0) & (col < W) & (row >= 0) & (row < H)
            idx = torch.nonzero(inside).squeeze(1)
            gz = d[row[idx], col[idx]]
            ok = (gz > 0) & ((z[idx] - gz).abs() <= tolerance + rel_tolerance * gz)
            seen[s + idx[ok]] = True
    return seen.numpy()


def mesh_scores(pred_mesh: tuple, pred_points: np.ndarray, gt_mesh: tuple, gt_points: np.ndarray,
                thresholds: dict[str, float]) -> dict:
    """Scores of a reconstruction against the truth. ``*_mesh``: (vertices [V,3], triangles [F,3]); ``pred_points``
    samples of the reconstruction (accuracy: their distance to the true mesh); ``gt_points`` the samples of the truth
    it should cover (completeness: their distance to the reconstruction; e.g. only the visible ones). Returns
    ``accuracy`` / ``completeness`` (mean distances, and ``*_median``), ``chamfer`` (their mean), and per named
    threshold ``precision_<name>``, ``recall_<name>``, ``fscore_<name>``."""
    d_pred = point_mesh_distances(pred_points, *gt_mesh)
    d_gt = point_mesh_distances(gt_points, *pred_mesh)
    out = {"accuracy": float(d_pred.mean()), "completeness": float(d_gt.mean()),
           "chamfer": float((d_pred.mean() + d_gt.mean()) / 2),
           "accuracy_median": float(np.median(d_pred)), "completeness_median": float(np.median(d_gt))}
    for name, th in thresholds.items():
        p, r = float((d_pred < th).mean()), float((d_gt < th).mean())
        out[f"precision_{name}"], out[f"recall_{name}"] = p, r
        out[f"fscore_{name}"] = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return out


MESH_SAMPLES = 100_000
"""Area-uniform samples per mesh of :func:`score_reconstruction` (``benchmark mesh --samples``)."""


def score_reconstruction(pred_mesh: tuple, gt_mesh: tuple, scene_box, cameras: Cameras, depths: list[torch.Tensor],
                         samples: int = MESH_SAMPLES, seed: int = 0) -> tuple[dict, np.ndarray]:
    """A reconstructed mesh against the ground truth, the ``benchmark mesh`` way. Thresholds and the relative
    Chamfer distance are in fractions of the diagonal of ``scene_box`` [2,3]; ``samples`` points on the
    reconstruction, ``2 * samples`` on the truth of which those seen by ``cameras`` (with their ground-truth
    ``depths``, :func:`visible_mask`) and the first ``samples`` of all are the two references. Meshes are
    (vertices [V,3], triangles [F,3]) in the frame and units of the cameras.

    Returns (scores, the reconstruction's samples [samples,3]). scores: ``chamfer_rel``, ``fscore_1pct``,
    ``fscore_2pct``, ``precision_2pct``, ``recall_2pct`` (against the visible truth: the headline figures),
    ``chamfer_rel_full`` (the whole truth), ``scene_diagonal``, ``gt_visible_fraction``, and the full
    :func:`mesh_scores` dicts ``visible`` and ``full``."""
    diag = float(np.linalg.norm(np.diff(np.asarray(scene_box, dtype=np.float64).reshape(2, 3), axis=0)))
    th = {"1pct": 0.01 * diag, "2pct": 0.02 * diag}
    pred_s = sample_surface(*pred_mesh, samples, seed)
    gt_s = sample_surface(*gt_mesh, samples * 2, seed + 1)
    seen = visible_mask(gt_s, cameras, depths)
    vis = mesh_scores(pred_mesh, pred_s, gt_mesh, gt_s[seen][:samples], th)
    full = mesh_scores(pred_mesh, pred_s, gt_mesh, gt_s[:samples], th)
    scores = {"scene_diagonal": diag, "gt_visible_fraction": float(seen.mean()),
              "chamfer_rel": vis["chamfer"] / diag, "fscore_1pct": vis["fscore_1pct"],
              "fscore_2pct": vis["fscore_2pct"], "precision_2pct": vis["precision_2pct"],
              "recall_2pct": vis["recall_2pct"], "chamfer_rel_full": full["chamfer"] / diag,
              "visible": vis, "full": full}
    return scores, pred_s
