"""``nerf-mapping export poisson|pointcloud``: a mesh or an oriented point cloud from a checkpoint or a saved map.

    nerf-mapping export poisson --checkpoint CKPT --output-dir DIR [--depth 9] [--num-points N]
                                [--target-triangles N] [--bounds XMIN YMIN ZMIN XMAX YMAX ZMAX]
    nerf-mapping export pointcloud --checkpoint CKPT --output-dir DIR [--num-points N]

CKPT is an offline ``checkpoint.pt`` (``nerf-mapping train``) or a map file saved by the node (SaveMap). The method
and its settings: :mod:`nerf_mapping.export.mesh`. Files go only under ``--output-dir`` (``--name`` is a file name
inside it). Offline checkpoints of normalised datasets are written in the dataset's own frame, maps in ``map``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DEFAULT_NAMES = {"poisson": "mesh.ply", "pointcloud": "pointcloud.ply"}


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a Poisson mesh or a point cloud of a trained map (.ply)")
    es = p.add_subparsers(dest="export_kind", required=True)
    for kind, desc in (("poisson", "oriented surface points -> screened Poisson mesh with vertex colours"),
                       ("pointcloud", "oriented, coloured surface points")):
        q = es.add_parser(kind, help=desc)
        q.add_argument("--checkpoint", required=True, type=Path, help="checkpoint.pt or a saved map file")
        q.add_argument("--output-dir", required=True, type=Path)
        q.add_argument("--name", default=DEFAULT_NAMES[kind], help="file name under --output-dir")
        q.add_argument("--num-points", type=int, default=None, help="rays cast over the training views")
        q.add_argument("--min-opacity", type=float, default=None, help="a ray yields a point above this opacity")
        q.add_argument("--bounds", type=float, nargs=6, default=None, metavar=("XMIN", "YMIN", "ZMIN", "XMAX", "YMAX",
                                                                               "ZMAX"),
                       help="crop box in the model frame (default: the scene box)")
        if kind == "poisson":
            q.add_argument("--depth", type=int, default=None, help="Poisson octree depth 1..12 (default 9)")
            q.add_argument("--target-triangles", type=int, default=None, help="quadric decimation target (0 = off)")
            q.add_argument("--density-quantile", type=float, default=None,
                           help="trim vertices below this quantile of Poisson density")
        q.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
        q.add_argument("--quiet", action="store_true")
        q.set_defaults(func=cmd_export, kind=kind)


def export_config(args: argparse.Namespace):
    """The exporter's config from the command's options (unset options keep the exporter's defaults)."""
    from nerf_mapping.export.mesh import MeshExportConfig

    cfg = MeshExportConfig()
    for opt, key in (("depth", "depth"), ("num_points", "num_points"), ("target_triangles", "target_triangles"),
                     ("min_opacity", "min_opacity"), ("density_quantile", "density_quantile")):
        v = getattr(args, opt, None)
        if v is not None:
            setattr(cfg, key, v)
    if args.bounds is not None:
        cfg.bounds = tuple(args.bounds)
    return cfg.validate()


def load_for_export(path: Path):
    """(trainer, training views at refined poses, world transform, world scale) of a checkpoint or a map file."""
    import torch

    from nerf_mapping.cli.common import load_trainer
    from nerf_mapping.export.mesh import checkpoint_views, training_views

    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"error: checkpoint {p} not found")
    try:
        head = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets a one-line error
        raise SystemExit(f"error: cannot load checkpoint {p}: {e}")
    extra = head.get("extra", {}) if isinstance(head, dict) else {}
    del head
    if "keyframe_ids" in extra:  # a map saved by the node: its keyframes are the views
        from nerf_mapping.mapping.map_io import load_map

        try:
            trainer, _ = load_map(p)
        except Exception as e:  # noqa: BLE001
            raise SystemExit(f"error: cannot load map {p}: {e}")
        return trainer, training_views(trainer), None, 1.0
    trainer = load_trainer(p)
    views = checkpoint_views(trainer)
    return trainer, views, extra.get("world_transform"), float(extra.get("world_scale", 1.0))


def cmd_export(args) -> int:
    import torch
    from tqdm import tqdm

    from nerf_mapping.cli.common import exit_on_error
    from nerf_mapping.export.mesh import export_geometry, snapshot
    from nerf_mapping.export.paths import safe_output_path

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = exit_on_error(export_config, args)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = exit_on_error(safe_output_path, out_dir, args.name, DEFAULT_NAMES[args.kind], ".ply")
    trainer, views, world_T, world_scale = exit_on_error(load_for_export, args.checkpoint)
    snap = snapshot(trainer, views)
    bar = tqdm(total=len(views), desc="surface points", unit="view", dynamic_ncols=True, disable=args.quiet)

    def progress(done: int, total: int) -> None:
        bar.update(done - bar.n)

    t0 = time.perf_counter()
    try:
        res = exit_on_error(export_geometry, snap, path, cfg, args.kind, progress, 0,
                            None if world_T is None else world_T.numpy(), world_scale)
    finally:
        bar.close()
    summary = {"kind": args.kind, "file": str(res.path), "points": res.n_points, "vertices": res.n_vertices,
               "triangles": res.n_triangles, "seconds": round(time.perf_counter() - t0, 2),
               "phase_seconds": {k: round(v, 2) for k, v in res.seconds.items()}}
    print(json.dumps(summary, indent=2))
    return 0
