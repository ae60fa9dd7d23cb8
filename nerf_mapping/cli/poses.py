"""``nerf-mapping poses ...`` and the pose-refinement flags of ``nerf-mapping train``.

    nerf-mapping train ... --pose-noise-rot-deg R --pose-noise-trans T --pose-opt {off,so3xr3,se3,quat,6d}
                           [--c2f START,END] [--pose-precondition {camp,diag,none}]
    nerf-mapping poses export --checkpoint CKPT --output transforms.json [--which refined|input|gt]
    nerf-mapping poses errors --checkpoint CKPT [--json OUT.json]     (needs a run trained with --pose-noise-*)

Exported poses are in the dataset file's frame (the inverse of ``SceneData.world_transform`` is applied) with
nerfstudio's conventions (OpenGL camera axes, 4x4 ``transform_matrix``, per-frame intrinsics at full resolution).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

POSE_OPT_CHOICES = ("off", "so3xr3", "se3", "quat", "6d")
PRECONDITION_CHOICES = ("camp", "diag", "none")


# ------------------------------------------------------------------------------------------------ train hooks
def add_train_args(p: argparse.ArgumentParser) -> None:
    """Pose-noise / pose-refinement flags of ``nerf-mapping train``."""
    g = p.add_argument_group("pose refinement")
    g.add_argument("--pose-noise-rot-deg", type=float, default=0.0,
                   help="add random rotation noise to the training poses (RMS angle, degrees; frame 0 kept exact)")
    g.add_argument("--pose-noise-trans", type=float, default=0.0,
                   help="add random translation noise to the training poses (RMS offset, scene units)")
    g.add_argument("--pose-noise-seed", type=int, default=0)
    g.add_argument("--pose-opt", choices=POSE_OPT_CHOICES, default=None,
                   help="learnable per-frame pose correction (default: the config's pose.mode, i.e. off)")
    g.add_argument("--c2f", default=None, metavar="START,END",
                   help="coarse-to-fine hash-level annealing between these fractions of the run, e.g. 0.0,0.5")
    g.add_argument("--pose-precondition", choices=PRECONDITION_CHOICES, default=None,
                   help="per-frame preconditioning of the pose parameters (default camp: equal image motion per "
                        "direction, after CamP; none: raw parameters, better for tiny images / few rays per frame)")


def apply_pose_noise(args, data):
    """Perturb ``data``'s training poses in place when noise flags are set; remembers the exact poses."""
    from nerf_mapping.evaluation.poses import perturb_poses

    rot = float(getattr(args, "pose_noise_rot_deg", 0.0) or 0.0)
    trans = float(getattr(args, "pose_noise_trans", 0.0) or 0.0)
    data.metadata["gt_c2w"] = data.cameras.c2w.clone()
    if rot > 0 or trans > 0:
        data.cameras.c2w = perturb_poses(data.cameras.c2w, rot, trans, seed=getattr(args, "pose_noise_seed", 0))
        print(f"pose noise: {rot:g} deg RMS rotation, {trans:g} RMS translation (frame 0 exact)")
    return data


def apply_pose_config(args, cfg) -> None:
    """--c2f / --pose-precondition (``--pose-opt`` is applied by ``cli.common.configure``, whose grid cap follows it)."""
    from nerf_mapping.cli.common import exit_on_error
    from nerf_mapping.config.presets import parse_c2f

    c2f = exit_on_error(parse_c2f, getattr(args, "c2f", None))
    if c2f is not None:
        cfg.pose.c2f = c2f
    if getattr(args, "pose_precondition", None) is not None:
        cfg.pose.precondition = args.pose_precondition


def train_extra(args, data) -> dict:
    """Checkpoint extras for pose export / evaluation."""
    import torch

    out = {
        "image_paths": [str(Path(p).resolve()) for p in data.image_paths],
        "train_distortion": data.cameras.distortion.clone(),
        "pose_noise": {"rot_deg": float(getattr(args, "pose_noise_rot_deg", 0.0) or 0.0),
                       "trans": float(getattr(args, "pose_noise_trans", 0.0) or 0.0),
                       "seed": int(getattr(args, "pose_noise_seed", 0))},
    }
    gt = data.metadata.get("gt_c2w")
    if gt is not None and not torch.equal(gt, data.cameras.c2w):
        out["train_c2w_gt"] = gt.clone()
    sm = data.metadata.get("dtu_scale_mat")
    if sm is not None:
        out["dtu_scale_mat"] = torch.as_tensor(sm, dtype=torch.float64)
    return out


# ------------------------------------------------------------------------------------------------ poses export
def _load(path):
    """A trained checkpoint that records its training poses (``cli.common.load_trainer`` plus that check)."""
    from nerf_mapping.cli.common import load_trainer

    tr = load_trainer(path)
    if "train_c2w" not in getattr(tr, "extra", {}):
        raise SystemExit(f"error: {path} records no training poses (train it with `nerf-mapping train`)")
    return tr


def cmd_export(args) -> int:
    import numpy as np

    from nerf_mapping.evaluation.poses import refined_train_poses
    from nerf_mapping.export.transforms import export_transforms
    from nerf_mapping.geometry import to_file_frame

    tr = _load(args.checkpoint)
    ex = tr.extra
    c2w_in = ex["train_c2w"].float()
    if args.which == "refined":
        c2w = refined_train_poses(tr, c2w_in)
    elif args.which == "input":
        c2w = c2w_in
    else:
        if "train_c2w_gt" not in ex:
            raise SystemExit("error: the checkpoint has no ground-truth poses (no --pose-noise-* at training)")
        c2w = ex["train_c2w_gt"].float()
    wt = ex.get("world_transform")
    c2w_file = to_file_frame(wt.numpy(), c2w.numpy()) if wt is not None else c2w.double().numpy()
    ds = float(ex.get("downscale", 1))
    K = ex["train_intrinsics"].double().numpy() * ds
    sizes = np.round(ex["train_size"].double().numpy() * ds).astype(int)
    path = export_transforms(args.output, c2w_file, K, sizes, ex.get("image_paths"),
                             extra_meta={"poses": args.which, "pose_mode": tr.cfg.pose.mode,
                                         "checkpoint": str(Path(args.checkpoint).resolve()),
                                         "source_data": ex.get("data")})
    dist = ex.get("train_distortion")
    if dist is not None and bool((dist != 0).any()):  # carry OpenCV distortion (k1,k2,k3,k4,p1,p2) per frame
        doc = json.loads(path.read_text())
        for fr, d in zip(doc["frames"], dist.tolist()):
            fr.update({"k1": d[0], "k2": d[1], "k3": d[2], "k4": d[3], "p1": d[4], "p2": d[5]})
        path.write_text(json.dumps(doc, indent=2))
    print(f"{len(c2w_file)} {args.which} poses ({tr.cfg.pose.mode}) -> {path}")
    return 0


def cmd_errors(args) -> int:
    from nerf_mapping.cli.common import print_and_write_json
    from nerf_mapping.evaluation.poses import pose_errors, refined_train_poses

    tr = _load(args.checkpoint)
    ex = tr.extra
    if "train_c2w_gt" not in ex:
        raise SystemExit("error: the checkpoint has no ground-truth poses (train with --pose-noise-rot-deg/-trans)")
    mm = float(ex["dtu_scale_mat"][0, 0]) if "dtu_scale_mat" in ex else None
    gt = ex["train_c2w_gt"].double().numpy()
    init = pose_errors(ex["train_c2w"].double().numpy(), gt, unit_to_mm=mm)
    final = pose_errors(refined_train_poses(tr, ex["train_c2w"].float()).double().numpy(), gt, unit_to_mm=mm)
    res = {"initial": init, "final": final, "pose_mode": tr.cfg.pose.mode}
    print_and_write_json(res, args.json, res, label=None)
    return 0


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("poses", help="refined camera poses: export to nerfstudio transforms.json, errors")
    ps = p.add_subparsers(dest="poses_command", required=True)
    q = ps.add_parser("export", help="write the (refined) training poses as a nerfstudio transforms.json")
    q.add_argument("--checkpoint", required=True, type=Path)
    q.add_argument("--output", required=True, type=Path)
    q.add_argument("--which", choices=["refined", "input", "gt"], default="refined",
                   help="refined (default), the input poses the run saw, or the exact poses before added noise")
    q.set_defaults(func=cmd_export)
    q = ps.add_parser("errors", help="rotation / translation errors (Sim(3)-aligned) of a run trained with pose noise")
    q.add_argument("--checkpoint", required=True, type=Path)
    q.add_argument("--json", type=Path, default=None)
    q.set_defaults(func=cmd_errors)
