"""``nerf-mapping view``: open a saved map in the browser viewer, offline (no ROS, no training).

    nerf-mapping view --checkpoint MAP.pt [--port 8080] [--host 127.0.0.1] [--params mapper.yaml] [--set KEY=VALUE]

MAP is a map file saved by the node (SaveMap, autosaves, the demo's ``map/demo_map.pt``) or by the viewer's Save map
button, or a ``nerf-mapping train`` checkpoint (the same file format without keyframe records: the viewer then
shows its training cameras as the frustums). The map is loaded into an
:class:`~nerf_mapping.mapping.mapper.OnlineMapper` with training off, exactly as the node's LoadMap service loads
it, and served by :class:`~nerf_mapping.viewer.viewer.Viewer` (the code the node runs) until Ctrl-C.

Mapping settings (the semantics teacher for queries, the render budget, ...) come from a node parameters file:
``--params``, else a ``mapper.yaml`` beside the map or one folder up (the ROS demo writes one, with the labels
teacher), else the node's defaults; ``--set`` overrides single parameters (node parameter names). Save map and
Export mesh write into ``--output-dir`` (default: the map's folder).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path


def add_cli(subparsers) -> None:
    from nerf_mapping.viewer.config import ViewerConfig

    p = subparsers.add_parser("view", help="open a saved map (or a train checkpoint) in the browser viewer, offline",
                              description="Open a saved map (the node's SaveMap file, an autosave) or a train "
                                          "checkpoint in the browser viewer, offline: no ROS, no training.")
    p.add_argument("--checkpoint", required=True, type=Path, help="a saved map (.pt) or a train checkpoint.pt")
    p.add_argument("--port", type=int, default=8080, help="viewer port (default 8080; a busy one is replaced by the "
                                                          "next free port)")
    p.add_argument("--host", default=ViewerConfig.host, help="listen address (default %(default)s: this machine "
                                                             "only; 0.0.0.0: every interface)")
    p.add_argument("--params", type=Path, default=None,
                   help="node parameters YAML (nerf_mapper: ros__parameters:) with the mapping settings; default: a "
                        "mapper.yaml beside the map or one folder up, else the defaults")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="parameter override (node parameter names, e.g. semantics.teacher=labels)")
    p.add_argument("--output-dir", type=Path, default=None, help="where Save map / Export mesh write (default: the "
                                                                 "map's folder)")
    p.set_defaults(func=cmd_view)


def find_params(checkpoint: Path) -> Path | None:
    """A node parameters file that belongs to ``checkpoint``: ``mapper.yaml`` beside it or one folder up (the ROS
    demo's output folder holds ``mapper.yaml`` and ``map/``)."""
    for d in (checkpoint.parent, checkpoint.parent.parent):
        p = d / "mapper.yaml"
        if p.is_file():
            return p
    return None


def configs(params: Path | None, sets: list[str]):
    """(MapperConfig with training, autosave and resume off; ViewerConfig) from a node parameters file and
    ``--set`` items; ValueError naming a bad parameter."""
    import dataclasses

    import yaml

    from nerf_mapping.ros.params import NODE_NAME, defaults, mapper_config, node_config

    flat = dict(defaults())
    if params is not None:
        doc = yaml.safe_load(params.read_text()) or {}
        node = doc.get(NODE_NAME, doc.get("/**", {})) if isinstance(doc, dict) else {}
        values = (node or {}).get("ros__parameters", {}) if isinstance(node, dict) else {}

        def walk(d, prefix=""):
            for k, v in d.items():
                if isinstance(v, dict):
                    yield from walk(v, f"{prefix}{k}.")
                else:
                    yield prefix + str(k), v

        flat.update((k, v) for k, v in walk(values) if k in flat)  # unknown names: ignored, as ROS would
    for item in sets:  # as apply_sets, on the flat names: mapping and viewer parameters alike
        if not str(item).strip():
            continue
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = (x.strip() for x in item.split("=", 1))
        if k not in flat:
            raise ValueError(f"unknown parameter {k!r}")
        flat[k] = yaml.safe_load(v) if v else ""
    cfg = mapper_config(flat.__getitem__, output_dir="")  # values converted to the fields' types (or ValueError)
    cfg = dataclasses.replace(cfg, autosave_dir="", autosave_period_s=0.0, resume=False,
                              training=dataclasses.replace(cfg.training, enabled=False))
    return cfg, node_config(flat.__getitem__).viewer


def open_map(path: Path, cfg, log=None):
    """An :class:`OnlineMapper` (not training) holding the map in ``path``, started (its semantics worker restores
    the language field) and given the keyframes' camera as its camera info, so that views render with the mapped
    camera's field of view. ValueError with the reason for a file it cannot load."""
    import torch

    from nerf_mapping.mapping.mapper import OnlineMapper

    import zipfile

    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive: anything else is not ours
        raise ValueError(f"{path} is not a map or checkpoint file (not written by torch.save)")
    mapper = OnlineMapper(cfg, logger=log)
    try:
        mapper.load(path)
    except Exception as exc:  # noqa: BLE001 - one clear message for any unreadable file
        raise ValueError(f"cannot load {path} as a map or checkpoint: {exc}") from exc
    tr = mapper.trainer
    intr = None
    ids = tr.frames.frame_ids()
    if ids:
        c = tr.frames.camera(ids[-1])
        intr = {"fx": float(c.fx[0]), "fy": float(c.fy[0]), "cx": float(c.cx[0]), "cy": float(c.cy[0]),
                "width": int(c.width[0]), "height": int(c.height[0]),
                "distortion": [0.0] * 6, "model": 0}  # renders are pinhole
    elif "train_intrinsics" in (getattr(tr, "extra", None) or {}):
        fx, fy, cx, cy = (float(x) for x in torch.as_tensor(tr.extra["train_intrinsics"][0]))
        w, h = (int(x) for x in torch.as_tensor(tr.extra["train_size"][0]))
        intr = {"fx": fx, "fy": fy, "cx": cx, "cy": cy, "width": w, "height": h, "distortion": [0.0] * 6, "model": 0}
    if intr is not None:
        mapper.intake.set_intrinsics(intr)
    mapper.start()
    return mapper


def cmd_view(args) -> int:
    import logging

    from nerf_mapping.viewer.viewer import Viewer

    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    path = Path(args.checkpoint)
    if not path.is_file():
        print(f"error: {path} not found", file=sys.stderr)
        return 2
    params = args.params if args.params is not None else find_params(path)
    if params is not None and not Path(params).is_file():
        print(f"error: parameters file {params} not found", file=sys.stderr)
        return 2
    try:
        cfg, vcfg = configs(params, args.set)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    vcfg.port, vcfg.host = int(args.port), str(args.host)
    print(f"parameters: {params if params is not None else 'the defaults'}"
          + (f"; semantics teacher {cfg.semantics.teacher}" if cfg.semantics.teacher else "; no semantics teacher "
             "(queries need semantics.teacher: --params or --set)"))
    try:
        mapper = open_map(path, cfg)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = args.output_dir if args.output_dir is not None else path.parent
    viewer = Viewer(mapper, vcfg, output_dir=out, label=f"nerf_mapping: {path.name}")
    try:
        url = viewer.start()
        print(f"map {path}: {len(mapper.trainer.frames)} keyframes, step {mapper.trainer.step_count}\n"
              f"viewer: {url}  (Ctrl-C to stop)", flush=True)
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("stopping")
    finally:
        viewer.stop()
        mapper.stop()
    return 0
