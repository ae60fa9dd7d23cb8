"""``nerf-mapping benchmark segmentation``: open-vocabulary 3D segmentation of a labelled demo scene.

    nerf-mapping benchmark segmentation [--data SCENE_DIR] [--time-budget 120] [--teacher labels] --json OUT.json

Training: the offline trainer on the scene's training split (every 8th frame held out) at its ground-truth poses,
with a language field taught by ``--teacher`` (default the oracle ``labels`` teacher: class names through a
sentence encoder, :mod:`nerf_mapping.semantics.teachers`), for ``--time-budget`` seconds.

Queries: every class of ``labels.json`` by its name and by a synonym (:data:`SYNONYMS`, fixed before any
measurement), each against the default canonical negatives at the default threshold
(:mod:`nerf_mapping.semantics.query`).

- 3D: the candidate points (surface points over the training views, as the node's query uses) take the class of the
  nearest ground-truth mesh face when it is within ``--tolerance`` (default 2 % of the scene box diagonal), else
  none; per class, IoU of {relevancy >= threshold} with {that class} over all candidates, so a selected point off
  every true surface is a false positive (``matched_fraction``: how many candidates have a class at all; the rest
  measure the map's geometry, which ``benchmark mesh`` scores). ``miou_3d_names``, ``miou_3d_synonyms``: means over
  the classes present among the candidates.
- 3D, projected (``miou_3d_*_projected``): the same, with each candidate labelled by the ground-truth label of the
  pixel it was cast from: the lifting of semantics into the map, free of the map's geometric error.
- 2D: held-out views (``--eval-views`` of them, rendered at ``1/--eval-downscale``): per class, IoU of the rendered
  relevancy >= threshold with the ground-truth label image. ``miou_2d_names``.
- Latency: every query's seconds (features at the candidates, relevancy, selection, text encoding on a cache miss);
  ``query_seconds_median`` / ``_max``. Candidate generation (once per map state) is ``candidate_seconds``.

Written beside the JSON: ``segmentation.png`` (top view of the candidates, and of four queries' segmented points
coloured by relevancy). Measured results: docs/results/segmentation.md.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

SYNONYMS = {
    "floor": "ground", "wall": "partition", "ceiling": "roof", "table": "desk", "chair": "seat", "sofa": "couch",
    "lamp": "light", "plant": "houseplant", "mug": "cup", "bookshelf": "shelf", "picture": "painting",
}
"""A synonym per demo class: the issue's pairs (couch/sofa, seat/chair, houseplant/plant, cup/mug, desk/table,
shelf/bookshelf, painting/picture, light/lamp) and a common word for floor, wall and ceiling."""

PICTURE_QUERIES = ("sofa", "chair", "table", "plant")


def add_cli(bs) -> None:
    from nerf_mapping.benchmarks import add_demo_scene_args, add_inputs_arg

    q = bs.add_parser("segmentation", help="text queries on a labelled demo scene: 3D / 2D mIoU by class names and "
                                           "synonyms, query latency")
    add_demo_scene_args(q, "segmentation.png")
    add_inputs_arg(q)
    q.add_argument("--teacher", default="labels", choices=("labels", "clip"))
    q.add_argument("--clip-path", default="", help="local CLIP weights (the clip teacher)")
    q.add_argument("--tolerance", type=float, default=0.02,
                   help="a candidate point takes a ground-truth class within this fraction of the box diagonal")
    q.add_argument("--eval-views", type=int, default=6, help="held-out views scored in 2D")
    q.add_argument("--eval-downscale", type=int, default=2, help="2D views rendered at 1/this resolution")
    q.set_defaults(func=cmd_benchmark_segmentation)


def run(args) -> dict:
    import torch

    from nerf_mapping.cli.common import configure, load_data
    from nerf_mapping.evaluation.segmentation import iou, mean_iou, nearest_face_labels, projected_labels
    from nerf_mapping.export.mesh import snapshot
    from nerf_mapping.scene.generate import ensure_default_scene
    from nerf_mapping.scene.mesh_io import read_labeled_ply
    from nerf_mapping.semantics.field import attach_language_field
    from nerf_mapping.semantics.labels import class_names, label_images
    from nerf_mapping.semantics.query import (QueryConfig, candidate_points, language_snapshot, render_language,
                                              segment, text_relevancy)
    from nerf_mapping.semantics.teachers import TeacherConfig, make_teacher
    from nerf_mapping.benchmarks import range_frame_store
    from nerf_mapping.training.offline import scene_spec
    from nerf_mapping.training.trainer import Trainer

    scene = Path(args.data) if args.data else ensure_default_scene(progress=not args.quiet)
    if not (scene / "mesh.ply").is_file() or not (scene / "labels.json").is_file():
        raise ValueError(f"{scene}: no mesh.ply / labels.json (a scene written by `nerf-mapping scene generate`)")
    out_dir = Path(args.output) if args.output else (Path(args.json).parent if args.json else
                                                     Path("outputs/segmentation"))
    out_dir.mkdir(parents=True, exist_ok=True)
    data = load_data(scene, "train", 1)
    names = class_names(data)
    teacher = make_teacher(TeacherConfig(name=args.teacher, clip_path=args.clip_path), names)
    cfg = configure(data, args, seed=args.seed)
    inputs = getattr(args, "inputs", "rgb")
    cfg.range.enabled = cfg.range.enabled and inputs != "rgb"
    trainer = Trainer(cfg, scene_spec(data), range_frame_store(data, scene, inputs, seed=args.seed))
    train_labels = label_images(data)  # read once: the teacher's targets and the projected 3D ground truth
    t0 = time.perf_counter()
    attach_language_field(trainer, data, teacher, labels=train_labels if teacher.needs_labels else None)
    teacher_s = time.perf_counter() - t0
    summary = trainer.train(time_budget=args.time_budget, progress=not args.quiet)
    qcfg = QueryConfig().validate()
    field = language_snapshot(trainer)
    snap = snapshot(trainer)
    cands = candidate_points(snap, qcfg.num_points)

    gt = read_labeled_ply(scene / "mesh.ply")
    diag = float(np.linalg.norm(np.diff(data.scene_box.numpy(), axis=0)))
    labels, dist = nearest_face_labels(cands.xyz.numpy(), gt["vertices"], gt["triangles"], gt["face_class"],
                                       args.tolerance * diag)
    matched = labels > 0
    lifted = projected_labels(cands.view, cands.pixel, train_labels)
    seen = lifted > 0
    classes = {i: n for i, n in sorted(names.items()) if i != 0}

    # 3D: every class by name and by synonym; every query timed
    per_class: dict[str, dict] = {}
    seconds = []
    segs = {}
    for cid, name in classes.items():
        entry = {"id": cid, "gt_points": int((labels == cid).sum())}
        for kind, text in (("name", name), ("synonym", SYNONYMS.get(name, name))):
            seg = segment(field, teacher, cands, text, qcfg)
            seconds.append(seg.seconds)
            pred = (seg.all_relevancy >= qcfg.threshold).numpy()
            entry[f"{kind}_text"] = text
            entry[f"iou_3d_{kind}"] = iou(pred, labels == cid)
            entry[f"iou_3d_{kind}_projected"] = iou(pred[seen], lifted[seen] == cid)
            entry[f"points_{kind}"] = int(pred.sum())
            if kind == "name":
                segs[name] = seg
        per_class[name] = entry

    # 2D: held-out views, features rendered once per view, every class scored
    test = load_data(scene, "test", args.eval_downscale)
    test_labels = label_images(test)
    views = np.linspace(0, len(test) - 1, min(args.eval_views, len(test))).round().astype(int).tolist()
    inter = {c: 0 for c in classes}
    union = {c: 0 for c in classes}
    present = {c: False for c in classes}
    t2d = time.perf_counter()
    for vi in views:
        feats, opacity, _ = render_language(snap, field, test.cameras, vi)
        h, w = opacity.shape
        f = feats.reshape(h * w, -1)
        lab = test_labels[vi].reshape(-1)
        for cid, name in classes.items():
            r = text_relevancy(teacher, f, name, qcfg)
            pred = ((r >= qcfg.threshold) & (opacity.reshape(-1) >= 0.5)).numpy()
            truth = lab == cid
            present[cid] |= bool(truth.any())
            inter[cid] += int((pred & truth).sum())
            union[cid] += int((pred | truth).sum())
    for cid, name in classes.items():
        per_class[name]["iou_2d_name"] = inter[cid] / union[cid] if present[cid] and union[cid] else None
    eval_2d_s = time.perf_counter() - t2d

    out = {
        "scene": str(scene), "inputs": inputs, "teacher": teacher.name, "teacher_dim": teacher.dim,
        "teacher_note": ("oracle: ground-truth class labels embedded by all-MiniLM-L6-v2 (measures 3D lifting and "
                         "text matching, not 2D recognition)" if teacher.name == "labels" else "CLIP, MaskCLIP-style"),
        "miou_3d_names": mean_iou(e["iou_3d_name"] for e in per_class.values()),
        "miou_3d_synonyms": mean_iou(e["iou_3d_synonym"] for e in per_class.values()),
        "miou_3d_names_projected": mean_iou(e["iou_3d_name_projected"] for e in per_class.values()),
        "miou_3d_synonyms_projected": mean_iou(e["iou_3d_synonym_projected"] for e in per_class.values()),
        "miou_2d_names": mean_iou(e["iou_2d_name"] for e in per_class.values()),
        "query_seconds_median": float(np.median(seconds)), "query_seconds_max": float(np.max(seconds)),
        "queries": len(seconds), "candidates": int(cands.xyz.shape[0]), "candidate_seconds": cands.seconds,
        "matched_fraction": float(matched.mean()) if len(matched) else 0.0,
        "candidate_distance_median": float(np.median(dist)) if len(dist) else None,
        "tolerance_m": args.tolerance * diag, "threshold": qcfg.threshold, "negatives": list(qcfg.negatives),
        "time_budget_s": args.time_budget, "train_steps": summary["steps"], "train_seconds": summary["train_seconds"],
        "teacher_maps_seconds": teacher_s, "eval_2d_views": len(views), "eval_2d_seconds": eval_2d_s,
        "language_loss": float(next(e for e in trainer.extensions if e.name == "language").last_loss),
        "threads": torch.get_num_threads(), "trainer_overrides": list(args.set), "per_class": per_class,
    }
    out["picture"] = str(save_picture(out_dir / "segmentation.png", cands, segs))
    return out


def save_picture(path: Path, cands, segs: dict) -> Path:
    """Top view of the candidate points (the map's colours) and of a few queries' segmentations (grey candidates,
    segmented points in heat colours)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xyz, rgb = cands.xyz.numpy(), cands.rgb.numpy().clip(0, 1)
    rng = np.random.default_rng(0)
    sel = rng.choice(len(xyz), size=min(len(xyz), 40000), replace=False) if len(xyz) else np.zeros(0, int)
    shown = [q for q in PICTURE_QUERIES if q in segs] or list(segs)[:4]
    fig, axes = plt.subplots(1, 1 + len(shown), figsize=(4.2 * (1 + len(shown)), 4.2))
    axes = np.atleast_1d(axes)
    order = sel[np.argsort(xyz[sel, 2])]
    axes[0].scatter(xyz[order, 0], xyz[order, 1], c=rgb[order], s=0.3)
    axes[0].set_title("candidate points (top view)")
    for ax, q in zip(axes[1:], shown):
        s = segs[q]
        ax.scatter(xyz[sel, 0], xyz[sel, 1], c="0.85", s=0.2)
        o = np.argsort(s.xyz[:, 2]) if len(s.xyz) else np.zeros(0, int)
        ax.scatter(s.xyz[o, 0], s.xyz[o, 1], c=s.colors[o] / 255.0, s=0.5)
        ax.set_title(f'"{q}": {len(s.xyz)} points')
    for ax in axes:
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def cmd_benchmark_segmentation(args) -> int:
    from nerf_mapping.benchmarks import run_and_report

    return run_and_report(run, args, (
        "inputs", "miou_3d_names", "miou_3d_synonyms", "miou_3d_names_projected", "miou_3d_synonyms_projected",
        "miou_2d_names",
        "query_seconds_median", "query_seconds_max", "teacher", "candidates", "matched_fraction", "train_steps",
        "picture"))
