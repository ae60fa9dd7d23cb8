"""Benchmarks, one module each: image quality under a time budget (:mod:`.images`: lego, DTU, fox), pose
refinement under noise (:mod:`.poses`), the online mapper's drift correction (:mod:`.drift`), kernel throughput
(:mod:`.kernels`), mesh export (:mod:`.mesh`) and open-vocabulary segmentation (:mod:`.segmentation`) on the demo
scene. Measured figures: ``docs/results/``."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_demo_scene_args(q: argparse.ArgumentParser, outputs: str) -> None:
    """Arguments shared by the benchmarks that train on a generated demo scene (``outputs``: what ``--output``
    receives): --data, --time-budget, --seed, --output, --json, --quiet, the hash-encoding impl and ``--set``."""
    from nerf_mapping.cli.common import add_config_arg, add_impl_arg

    q.add_argument("--data", type=Path, default=None,
                   help="a scene written by `scene generate` (default: the cached default demo scene)")
    q.add_argument("--time-budget", type=float, default=120.0, help="training seconds")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--output", type=Path, default=None, help=f"folder for {outputs} (default: beside --json)")
    q.add_argument("--json", type=Path, default=None)
    q.add_argument("--quiet", action="store_true")
    add_impl_arg(q)
    add_config_arg(q)


def run_and_report(run, args, keys: tuple[str, ...]) -> int:
    """``run(args)`` (library errors become one-line exits), print ``keys`` of its result, write the whole result
    to ``--json`` when given."""
    from nerf_mapping.cli.common import exit_on_error, print_and_write_json

    res = exit_on_error(run, args)
    print_and_write_json(res, args.json, {k: res[k] for k in keys})
    return 0


INPUTS = ("rgb", "rgbd", "rgb+lidar")
"""The input sets of the demo-scene benchmarks (``--inputs``) and of the demo: colour only, colour + the simulated
depth camera, colour + the simulated LiDAR."""


def add_inputs_arg(q: argparse.ArgumentParser) -> None:
    q.add_argument("--inputs", choices=INPUTS, default="rgb",
                   help="sensors the map is trained from: rgb (default: figures comparable with RGB-only runs), rgbd "
                        "(+ the scene's simulated depth camera, sensor_depth/), rgb+lidar (+ its simulated LiDAR, "
                        "lidar.npz)")


def range_frame_store(data, scene: Path, inputs: str, seed: int = 0, lidar_points: int = 8192):
    """The training frame store of a generated demo scene for an input set: the colour frames of ``data`` (a split
    loaded from ``scene``), with the simulated depth camera's images (``rgbd``: ``sensor_depth_file_path``, noisy,
    with holes; never the ground-truth depth maps, which only score) or the simulated LiDAR's returns (``rgb+lidar``:
    the sweep nearest each frame, each point placed with the ground-truth body pose at its own capture time,
    expressed in the frame's camera), or neither (``rgb``)."""
    import json

    import numpy as np
    import torch
    from PIL import Image

    from nerf_mapping.training.frame_store import CameraRays, FrameStore

    if inputs not in INPUTS:
        raise ValueError(f"inputs must be one of {INPUTS}, got {inputs!r}")
    frames = json.loads((scene / "transforms.json").read_text())["frames"]
    fs = FrameStore(seed=seed)
    lidar = None
    if inputs == "rgb+lidar":
        from nerf_mapping.geometry.rigid import interpolate_poses
        from nerf_mapping.scene.sensors import LidarScans

        if not (scene / "lidar.npz").is_file():
            raise ValueError(f"{scene}: no lidar.npz (generate the scene with its LiDAR)")
        lidar = LidarScans.load(scene / "lidar.npz")
        with np.load(scene / "odometry.npz") as od:
            odom_ns, odom_gt = od["odom_stamps_ns"], od["odom_gt"]
    for i, img in enumerate(data.images):
        fr = frames[data.frame_indices[i]]
        cam = data.cameras[i:i + 1]
        depth = ranges = None
        if inputs == "rgbd":
            key = "sensor_depth_file_path"
            if key not in fr:
                raise ValueError(f"{scene}: frame {data.frame_indices[i]} has no {key} (a scene before v3?)")
            mm = np.asarray(Image.open(scene / fr[key]), dtype=np.float32)
            depth = torch.from_numpy(mm * 1e-3 * float(data.world_scale))
        elif lidar is not None:
            s = int(np.argmin(np.abs(lidar.stamps_ns - int(fr["timestamp_ns"]))))
            pts, t = lidar.scan(s)
            rng = np.random.default_rng(seed + i)
            sel = rng.choice(len(pts), min(lidar_points, len(pts)), replace=False)
            pts, t = pts[sel].astype(np.float64), t[sel]
            stamps = lidar.stamps_ns[s] + np.round(t * 1e9).astype(np.int64)
            bins = np.linspace(stamps.min(), stamps.max() + 1, 9)
            k = np.clip(np.searchsorted(bins, stamps, side="right") - 1, 0, 7)
            T_world_base = interpolate_poses(odom_ns, odom_gt, ((bins[:-1] + bins[1:]) / 2).astype(np.int64))
            T_world_lidar = T_world_base[k] @ lidar.t_base_lidar  # [n,4,4]
            c2w = np.eye(4)
            c2w[:3] = cam.c2w[0].double().numpy()
            T_cam_lidar = np.linalg.inv(c2w) @ T_world_lidar  # the model's camera axes (OpenGL)
            p = np.einsum("nij,nj->ni", T_cam_lidar[:, :3, :3], pts) + T_cam_lidar[:, :3, 3]
            o = T_cam_lidar[:, :3, 3]
            ranges = CameraRays.from_points(torch.from_numpy(o * data.world_scale).float(),
                                            torch.from_numpy(p * data.world_scale).float())
        fs.add(img, cam, depth=depth, ranges=ranges)
    return fs
