"""Open-vocabulary segmentation from the command line: ``train --teacher`` and ``nerf-mapping query``.

    nerf-mapping train --data SCENE --output OUT --teacher labels            # a language field beside the map
    nerf-mapping query --checkpoint OUT/checkpoint.pt --text "chair" [--threshold 0.5] --output chair.ply
                       [--render-view N --output-image relevancy.png] [--negatives object things ...]

``query`` takes an offline checkpoint or a map saved by the node (both hold the language field and which teacher
trained it). The teacher's text encoder is rebuilt from that record: the ``labels`` teacher needs nothing more, the
``clip`` teacher its local weights (``--clip-path``). The method: :mod:`nerf_mapping.semantics.query`.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", default=None, choices=("labels", "clip"),
                   help="train a language-feature field with this 2D teacher (labels: the capture's class labels "
                        "through a sentence encoder; clip: local CLIP weights, --clip-path)")
    p.add_argument("--clip-path", default="", help="local Hugging Face CLIP directory (the clip teacher)")


def attach_teacher(args, trainer, data):
    """``train --teacher``: the language field with every training frame's teacher map (None without)."""
    if not getattr(args, "teacher", None):
        return None
    from nerf_mapping.semantics.field import attach_language_field
    from nerf_mapping.semantics.labels import class_names
    from nerf_mapping.semantics.teachers import TeacherConfig, make_teacher

    t0 = time.perf_counter()
    names = class_names(data) if args.teacher == "labels" else None
    teacher = make_teacher(TeacherConfig(name=args.teacher, clip_path=args.clip_path), names)
    ext = attach_language_field(trainer, data, teacher)
    print(f"language field: teacher {teacher.name} ({teacher.dim}-D), {len(ext.targets)} teacher maps in "
          f"{time.perf_counter() - t0:.1f} s")
    return ext


def query_teacher(field, clip_path: str = ""):
    """The teacher (text side) a map's language field was trained with."""
    from nerf_mapping.semantics.teachers import TeacherConfig, make_teacher

    meta = field.teacher_meta
    cfg = TeacherConfig(name=field.teacher or "labels", clip_path=clip_path)
    if "prompt_template" in meta:
        cfg.prompt_template = meta["prompt_template"]
    teacher = make_teacher(cfg)
    if teacher.dim != field.dim:
        raise ValueError(f"the {teacher.name} teacher is {teacher.dim}-D, the map's language field {field.dim}-D")
    return teacher


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("query", help="open-vocabulary 3D segmentation of a map with a language field")
    p.add_argument("--checkpoint", required=True, type=Path, help="checkpoint.pt (train --teacher) or a saved map")
    p.add_argument("--text", required=True, help="what to find, e.g. 'chair'")
    p.add_argument("--threshold", type=float, default=None, help="relevancy threshold in [0, 1] (default 0.5)")
    p.add_argument("--negatives", nargs="+", default=None, help="canonical negatives (default: object things "
                                                                   "stuff texture)")
    p.add_argument("--num-points", type=int, default=None, help="rays cast for candidate points (default 100000)")
    p.add_argument("--output", type=Path, default=None, help="PLY of the segmented points (x y z rgb relevancy)")
    p.add_argument("--render-view", type=int, default=None, help="also a 2D relevancy image of this training view")
    p.add_argument("--output-image", type=Path, default=None, help="PNG of the 2D relevancy (with --render-view)")
    p.add_argument("--clip-path", default="", help="local CLIP weights (maps trained with the clip teacher)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_query)


def query_config(args):
    from nerf_mapping.semantics.query import QueryConfig

    cfg = QueryConfig()
    if args.threshold is not None:
        cfg.threshold = args.threshold
    if args.negatives:
        cfg.negatives = tuple(args.negatives)
    if args.num_points is not None:
        cfg.num_points = args.num_points
    return cfg.validate()


def cmd_query(args) -> int:
    from PIL import Image
    from tqdm import tqdm

    from nerf_mapping.cli.common import exit_on_error
    from nerf_mapping.cli.export import load_for_export
    from nerf_mapping.export.mesh import snapshot
    from nerf_mapping.semantics.field import restore_language_field
    from nerf_mapping.semantics.query import (candidate_points, language_snapshot, relevancy_overlay, segment,
                                              view_relevancy, write_segmentation_ply)

    cfg = exit_on_error(query_config, args)
    if args.output_image is not None and args.render_view is None:
        raise SystemExit("error: --output-image needs --render-view N")
    for out in (args.output, args.output_image):
        if out is not None and not Path(out).parent.is_dir():
            raise SystemExit(f"error: the directory of {out} does not exist")
    trainer, views, world_T, world_scale = load_for_export(args.checkpoint)
    if restore_language_field(trainer) is None:
        raise SystemExit(f"error: {args.checkpoint} has no language field (train with --teacher, or enable the "
                         "node's semantics.teacher)")
    field = language_snapshot(trainer)
    teacher = exit_on_error(query_teacher, field, args.clip_path)
    snap = snapshot(trainer, views)
    bar = tqdm(total=len(views), desc="candidate points", unit="view", dynamic_ncols=True, disable=args.quiet)
    try:
        cands = candidate_points(snap, cfg.num_points, lambda done, total: bar.update(done - bar.n))
    finally:
        bar.close()
    seg = exit_on_error(segment, field, teacher, cands, args.text, cfg)
    summary = {"text": seg.text, "teacher": seg.teacher, "threshold": cfg.threshold, "candidates": seg.n_candidates,
               "points": int(seg.xyz.shape[0]), "max_relevancy": float(seg.all_relevancy.max()) if
               seg.n_candidates else 0.0, "candidate_seconds": round(cands.seconds, 2),
               "query_seconds": round(seg.seconds, 3)}
    if args.output is not None:
        write_segmentation_ply(args.output, seg, None if world_T is None else world_T.numpy(), world_scale)
        summary["file"] = str(args.output)
    if args.render_view is not None:
        if not 0 <= args.render_view < len(views):
            raise SystemExit(f"error: --render-view must be within 0..{len(views) - 1}")
        r, rgb = exit_on_error(view_relevancy, snap, field, teacher, views, args.render_view, seg.text, cfg)
        out = args.output_image or Path(f"relevancy_{args.render_view}.png")
        Image.fromarray(relevancy_overlay(rgb, r, cfg.threshold)).save(out)
        summary["image"] = str(out)
        summary["image_pixels_selected"] = int((r >= cfg.threshold).sum())
    print(json.dumps(summary, indent=2))
    return 0
