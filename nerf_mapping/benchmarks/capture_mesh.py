"""Meshes of a real RGB-D capture scored against the capture's own depth (no ground-truth mesh exists for it).

    nerf-mapping export poisson --checkpoint RUN/checkpoint.pt --output-dir RUN/mesh     # once per run
    python -m nerf_mapping.benchmarks.capture_mesh --data ../shared/data/7scenes_redkitchen_rgbd \\
        --mesh "RGB only=RGB/mesh/mesh.ply" --mesh "RGB-D=RGBD/mesh/mesh.ply" --output OUT.png [--json OUT.json]

The reference is every frame's sensor depth back-projected at its pose (an even pixel lattice, all splits), the
points a depth fusion (KinectFusion, nvblox) would integrate. For each mesh: *accuracy*, the distance of points
sampled on the mesh to the nearest reference point (median, and the fraction within 5 cm), and *completeness*, the
fraction of reference points within 5 cm of the mesh samples. The picture shows each mesh from the top and the side,
coloured by its vertex colours and by its accuracy (blue 0 -> red >= 10 cm). Results: docs/results/range.md.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

NEAR_M = 0.05
"""Distance (m) under which a mesh sample and a reference point count as agreeing."""


def reference_points(data, step: int = 8) -> np.ndarray:
    """[N,3] world points of every frame's depth (pixels on a ``step`` lattice), in the dataset's frame."""
    import torch

    from nerf_mapping.cameras import camera_directions, rays_from_c2w, z_depth_to_distance

    pts = []
    for i in range(len(data)):
        d = data.depths[i]
        if d is None:
            continue
        sub = torch.zeros_like(d, dtype=torch.bool)
        sub[step // 2::step, step // 2::step] = True
        v, u = torch.nonzero((d > 0) & sub, as_tuple=True)
        dirs = camera_directions(data.cameras, torch.full_like(u, i), u.float() + 0.5, v.float() + 0.5)
        o, w = rays_from_c2w(data.cameras.c2w[i].expand(len(u), 3, 4), dirs)
        pts.append((o + w * z_depth_to_distance(d[v, u].float(), dirs)[:, None]).numpy())
    return np.concatenate(pts) / float(getattr(data, "world_scale", 1.0))


def score(mesh_path: Path, ref: np.ndarray, n: int = 200_000, seed: int = 0) -> tuple[dict, np.ndarray, np.ndarray,
                                                                                       np.ndarray]:
    """(scores, mesh samples [n,3], their colours [n,3], their accuracy distances [n]) of one mesh file."""
    import open3d as o3d
    from scipy.spatial import cKDTree

    mesh = o3d.io.read_triangle_mesh(str(mesh_path))
    if len(mesh.triangles) == 0:
        raise ValueError(f"{mesh_path}: no triangles")
    o3d.utility.random.seed(seed)
    pcd = mesh.sample_points_uniformly(n)
    p = np.asarray(pcd.points)
    c = np.asarray(pcd.colors) if pcd.has_colors() else np.full_like(p, 0.5)
    acc = cKDTree(ref).query(p, workers=-1)[0]
    comp = cKDTree(p).query(ref, workers=-1)[0]
    return ({"accuracy_median_m": float(np.median(acc)), "accuracy_within_5cm": float(np.mean(acc < NEAR_M)),
             "completeness_within_5cm": float(np.mean(comp < NEAR_M)), "triangles": len(mesh.triangles)},
            p, c, acc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, type=Path, help="an RGB-D dataset (depth maps and poses)")
    ap.add_argument("--mesh", action="append", required=True, metavar="NAME=PLY", help="a labelled mesh (repeat)")
    ap.add_argument("--output", required=True, type=Path, help="the picture (.png)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nerf_mapping.data import load_dataset

    meshes = []
    for item in args.mesh:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            ap.error(f"--mesh wants NAME=PLY with an existing file, got {item!r}")
        meshes.append((name, Path(path)))
    data = load_dataset(args.data, split="all", downscale=4)
    ref = reference_points(data)
    rng = np.random.default_rng(0)
    fig, axes = plt.subplots(len(meshes), 4, figsize=(20, 4.6 * len(meshes)), squeeze=False)
    results = {}
    for row, (name, path) in enumerate(meshes):
        scores, p, c, acc = score(path, ref)
        results[name] = scores
        print(f"{name}: " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))
        sel = rng.choice(len(p), size=min(len(p), 80_000), replace=False)
        for col, (a, b, view) in enumerate(((0, 1, "top (x-y)"), (0, 2, "side (x-z)"))):
            order = sel[np.argsort(p[sel, 3 - a - b])]
            axes[row, 2 * col].scatter(p[order, a], p[order, b], c=c[order], s=0.2)
            axes[row, 2 * col].set_title(f"{name}: mesh, {view}", fontsize=9)
            sc = axes[row, 2 * col + 1].scatter(p[order, a], p[order, b], c=acc[order], s=0.2, cmap="jet", vmin=0,
                                                vmax=2 * NEAR_M)
            axes[row, 2 * col + 1].set_title(f"{name}: distance to the sensor points (m), {view}", fontsize=9)
            fig.colorbar(sc, ax=axes[row, 2 * col + 1])
        for ax in axes[row]:
            ax.set_aspect("equal")
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=70)
    plt.close(fig)
    print(f"picture: {args.output}")
    if args.json:
        args.json.write_text(json.dumps({"data": str(args.data), "reference_points": len(ref), "meshes": results},
                                        indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
