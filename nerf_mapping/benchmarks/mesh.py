"""``nerf-mapping benchmark mesh``: train on a demo scene, export a Poisson mesh, compare it with the ground truth.

    nerf-mapping benchmark mesh [--data SCENE_DIR] [--time-budget 120] [--depth 9] --json OUT.json

The scene is the cached default demo scene (generated on first use) or any scene written by ``scene generate``
(``--data``: it carries ``mesh.ply`` and ground-truth depth maps). Training is the offline trainer on the scene's
training split at its ground-truth poses for ``--time-budget`` seconds; the export is :mod:`nerf_mapping.export.mesh`
with its defaults (``--depth``, ``--num-points``, ``--set`` for the trainer). Scores
(:mod:`nerf_mapping.evaluation.mesh`, 100k area-uniform samples on each mesh): Chamfer distance, precision / recall /
F-score at 1 % and 2 % of the scene box diagonal, against the ground truth restricted to what the training views
saw (``*_visible``, the headline figures: ``chamfer_rel``, ``fscore_*``, ``precision_2pct``, ``recall_2pct``) and
against the whole ground-truth mesh (``*_full``). Written beside the JSON: ``mesh.ply`` and ``mesh.png`` (top and
side views of the mesh samples, coloured by the mesh's colour and by their distance to the truth).
Measured results: docs/results/mesh.md.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def add_cli(bs) -> None:
    from nerf_mapping.benchmarks import add_demo_scene_args, add_inputs_arg
    from nerf_mapping.evaluation.mesh import MESH_SAMPLES

    q = bs.add_parser("mesh", help="Poisson mesh of a demo scene vs its ground-truth mesh: Chamfer, F-score, seconds")
    add_demo_scene_args(q, "mesh.ply / mesh.png")
    add_inputs_arg(q)
    q.add_argument("--depth", type=int, default=9, help="Poisson octree depth")
    q.add_argument("--num-points", type=int, default=None, help="rays cast for surface points (default: exporter's)")
    q.add_argument("--samples", type=int, default=MESH_SAMPLES, help="surface samples per mesh for the scores")
    q.set_defaults(func=cmd_benchmark_mesh)


def run(args) -> dict:
    import torch

    from nerf_mapping.cli.common import configure, load_data
    from nerf_mapping.evaluation.mesh import score_reconstruction
    from nerf_mapping.export.mesh import MeshExportConfig, export_geometry, snapshot
    from nerf_mapping.scene.generate import ensure_default_scene
    from nerf_mapping.scene.mesh_io import read_labeled_ply

    scene = Path(args.data) if args.data else ensure_default_scene(progress=not args.quiet)
    if not (scene / "mesh.ply").is_file():
        raise ValueError(f"{scene}: no mesh.ply (a scene written by `nerf-mapping scene generate` is needed)")
    out_dir = Path(args.output) if args.output else (Path(args.json).parent if args.json else Path("outputs/mesh"))
    out_dir.mkdir(parents=True, exist_ok=True)
    data = load_data(scene, "train", 1)
    if data.depths is None:
        raise ValueError(f"{scene}: the training views have no depth maps (needed to cull unseen ground truth)")
    cfg = configure(data, args, seed=args.seed)
    inputs = getattr(args, "inputs", "rgb")
    cfg.range.enabled = cfg.range.enabled and inputs != "rgb"
    from nerf_mapping.benchmarks import range_frame_store
    from nerf_mapping.training.offline import scene_spec
    from nerf_mapping.training.trainer import Trainer

    trainer = Trainer(cfg, scene_spec(data), range_frame_store(data, scene, inputs, seed=args.seed))
    summary = trainer.train(time_budget=args.time_budget, progress=not args.quiet)
    ecfg = MeshExportConfig(depth=args.depth)
    if args.num_points:
        ecfg.num_points = args.num_points
    t0 = time.perf_counter()
    snap = snapshot(trainer)
    res = export_geometry(snap, out_dir / "mesh.ply", ecfg)
    export_s = time.perf_counter() - t0

    gt = read_labeled_ply(scene / "mesh.ply")
    pred = (np.asarray(res.geometry.vertices), np.asarray(res.geometry.triangles))
    truth = (gt["vertices"], gt["triangles"])
    scores, pred_s = score_reconstruction(pred, truth, data.scene_box.numpy(), data.cameras, data.depths,
                                          args.samples, args.seed)
    spr = []
    with trainer.fast_inference(), torch.no_grad():
        for i in range(0, len(data), max(1, len(data) // 5)):
            r = trainer.render(data.cameras, i)
            spr.append(float(r["n_samples"]) / float(data.cameras.width[i] * data.cameras.height[i]))
    out = {
        "scene": str(scene), "inputs": inputs, "samples_per_ray_median": float(np.median(spr)),
        "time_budget_s": args.time_budget, "train_steps": summary["steps"],
        "train_seconds": summary["train_seconds"], "export_seconds": export_s,
        "export_phase_seconds": res.seconds, "depth": args.depth, "num_points_cast": ecfg.num_points,
        "n_points": res.n_points, "n_vertices": res.n_vertices, "n_triangles": res.n_triangles,
        **scores,
        "mesh": str(res.path), "threads": torch.get_num_threads(), "trainer_overrides": list(args.set),
    }
    out["picture"] = str(save_picture(out_dir / "mesh.png", pred_s, res.geometry, truth, scores["scene_diagonal"]))
    return out


def save_picture(path: Path, pred: np.ndarray, mesh, truth: tuple, diag: float) -> Path:
    """Top and side views of the mesh samples: coloured by the mesh's vertex colours, and by distance to the truth
    (blue 0 -> red >= 2 % of the diagonal)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nerf_mapping.evaluation.mesh import point_mesh_distances

    v = np.asarray(mesh.vertices)
    c = np.asarray(mesh.vertex_colors) if mesh.has_vertex_colors() else np.full((len(v), 3), 0.5)
    rng = np.random.default_rng(0)
    sel = rng.choice(len(v), size=min(len(v), 60000), replace=False)
    ps = pred[rng.choice(len(pred), size=min(len(pred), 60000), replace=False)]
    err = point_mesh_distances(ps, *truth)
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    for row, (a, b, name) in enumerate(((0, 1, "top (x-y)"), (0, 2, "side (x-z)"))):
        order = np.argsort(v[sel, 3 - a - b])  # paint far points first
        axes[row, 0].scatter(v[sel][order, a], v[sel][order, b], c=c[sel][order], s=0.3)
        axes[row, 0].set_title(f"mesh vertices, {name}")
        sc = axes[row, 1].scatter(ps[:, a], ps[:, b], c=err, s=0.3, cmap="jet", vmin=0, vmax=0.02 * diag)
        axes[row, 1].set_title(f"distance to ground truth (m), {name}")
        fig.colorbar(sc, ax=axes[row, 1])
        for ax in axes[row]:
            ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def cmd_benchmark_mesh(args) -> int:
    from nerf_mapping.benchmarks import run_and_report

    return run_and_report(run, args, (
        "inputs", "chamfer_rel", "fscore_1pct", "fscore_2pct", "precision_2pct", "recall_2pct", "chamfer_rel_full",
        "samples_per_ray_median",
        "export_seconds", "train_seconds", "train_steps", "n_triangles", "mesh", "picture"))
