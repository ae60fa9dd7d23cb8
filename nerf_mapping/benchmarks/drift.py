"""``nerf-mapping benchmark drift``: the node's online pose refinement on the demo sequence, repeatable and offline.

    nerf-mapping benchmark drift --json OUT.json

The demo scene (:mod:`nerf_mapping.scene`: 150 frames, seed 0, drifting odometry; generated into ``--scene`` unless
it is there already) is fed to the node's mapper (:class:`nerf_mapping.mapping.mapper.OnlineMapper` with the node's
defaults, :class:`nerf_mapping.mapping.config.MapperConfig`, then ``--set`` overrides): frame i enters at step ``--steps-per-frame`` * i with its noisy odometry camera
pose (interpolated at the image stamp, as the node does) and its stamp, and training goes on ``--extra-steps`` after
the last frame (``--steps-per-frame 0``: every frame at once, then ``--extra-steps`` steps). As in the node without a
time budget the field's learning rate never decays. Every ``--report-every`` steps, and at the end, the camera
positions of the frames entered so far are scored against ground truth (:func:`evaluation.trajectory.ate`: RMS, after a
rigid fit, the last frame's) for the odometry and for the refined poses.

Unlike the ROS demo (``scripts/demo.sh``), which reports the same ATE for the keyframes that a real-time run managed to
select and train, frames here are tied to steps rather than to wall-clock time: the runs are deterministic for a
seed and comparable across machines and builds. Every frame enters (no keyframe selection). The method is the drift
spline of :mod:`nerf_mapping.pose.correction`. Measured results: docs/results/drift.md.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np


def add_cli(bs) -> None:
    from nerf_mapping.cli.common import add_config_arg

    q = bs.add_parser("drift", help="online pose refinement (the node's trainer) on the demo sequence, frames entering "
                                    "one at a time: ATE of odometry vs refined poses")
    q.add_argument("--scene", type=Path, default=Path("outputs/demo_drift/scene"),
                   help="demo scene folder (generated there when it has no odometry.npz)")
    q.add_argument("--frames", type=int, default=150, help="frames of a newly generated scene")
    q.add_argument("--steps-per-frame", type=int, default=4, help="training steps between two frames (0: all at once)")
    q.add_argument("--extra-steps", type=int, default=0, help="steps after the last frame has entered")
    q.add_argument("--report-every", type=int, default=100)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    q.add_argument("--quiet", action="store_true")
    q.add_argument("--json", type=Path, default=None)
    add_config_arg(q)
    q.set_defaults(func=cmd_benchmark_drift)


def demo_sequence(scene: Path, frames: int = 150, seed: int = 0, progress: bool = True):
    """The demo scene at ``scene`` (generated with ``frames`` and ``seed`` when absent).

    Returns (SceneData with ground-truth poses, image stamps [N] in seconds from the first, odometry camera poses
    [N,3,4] as model c2w: the noisy odometry interpolated at the image stamps and moved to the camera, as the node
    builds keyframe poses)."""
    import torch

    from nerf_mapping.data import load_dataset
    from nerf_mapping.geometry.rigid import interpolate_poses
    from nerf_mapping.geometry import optical_pose_to_model_c2w
    from nerf_mapping.scene import SceneConfig, generate_scene

    scene = Path(scene)
    if not (scene / "odometry.npz").is_file():
        if scene.exists() and (not scene.is_dir() or any(scene.iterdir())):
            raise ValueError(f"{scene}: not a demo scene (no odometry.npz), and not an empty folder to generate into")
        generate_scene(SceneConfig(frames=frames, seed=seed, write_bag=False), scene, progress=progress)
    data = load_dataset(scene, "all", 1)
    d = np.load(scene / "odometry.npz")
    stamps = np.asarray(d["image_stamps_ns"], dtype=np.int64)
    T_odom_base = interpolate_poses(d["odom_stamps_ns"], d["odom_noisy"], stamps)
    cams = T_odom_base @ d["extrinsic_base_to_camera_optical"]
    odom = torch.tensor(np.stack([optical_pose_to_model_c2w(T)[:3] for T in cams]), dtype=torch.float32)
    return data, (stamps - stamps[0]).astype(np.float64) * 1e-9, odom


def run_drift(data, stamps_s, odom, steps_per_frame: int = 4, extra_steps: int = 0, seed: int = 0,
              threads: int | None = None, overrides: list[str] | tuple = (), report_every: int = 100,
              progress: bool = True) -> dict:
    """Feed the sequence to the node's mapper (see the module docstring). Returns a dict with the final ``odometry``
    and ``refined`` ATE (:func:`evaluation.trajectory.ate` dicts, metres), ``curve`` (one entry per report: step,
    frames, odometry / refined RMS and last-frame error), ``steps``, ``seconds``."""
    import torch

    from nerf_mapping.evaluation.trajectory import ate
    from nerf_mapping.geometry import model_c2w_to_optical_pose
    from nerf_mapping.mapping.mapper import OnlineMapper
    from nerf_mapping.mapping.config import MapperConfig

    n = len(data)
    if n == 0:
        raise ValueError("the sequence has no frames")
    if steps_per_frame < 0 or extra_steps < 0:
        raise ValueError("steps_per_frame and extra_steps must be >= 0")
    cfg = MapperConfig()  # the node's defaults
    cfg.training = dataclasses.replace(cfg.training, seed=seed, threads=threads or 0,
                                       overrides=tuple(cfg.training.overrides) + tuple(overrides))
    cfg.keyframe = dataclasses.replace(cfg.keyframe, capacity=max(cfg.keyframe.capacity, n))  # every frame stays
    mapper = OnlineMapper(cfg)
    gt = data.cameras.c2w

    def add(i: int) -> None:
        # the camera's odometry pose (a model c2w) as the node gets it: raw odometry camera pose and image stamp;
        # the body pose only feeds the odometry path, which is not scored here
        T_odom_cam = model_c2w_to_optical_pose(odom[i].double().numpy())
        image = data.images[i].numpy()
        mapper.add_keyframe(image, T_odom_cam, T_odom_cam, int(round(float(stamps_s[i]) * 1e9)),
                            camera=data.cameras[i:i + 1])

    def score(k: int) -> tuple[dict, dict]:
        ref = mapper.trainer.pose.refined(odom[:k], torch.arange(k))
        g = gt[:k, :, 3].double().numpy()
        return ate(odom[:k, :, 3].double().numpy(), g), ate(ref[:k, :, 3].double().numpy(), g)

    entered = n if steps_per_frame == 0 else 1
    for i in range(entered):
        add(i)
    total = (steps_per_frame * (n - 1) + 1 if steps_per_frame else 0) + extra_steps
    curve = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="step", dynamic_ncols=True, mininterval=1.0)
    t0 = time.perf_counter()
    for s in range(total):
        while entered < n and s >= steps_per_frame * entered:
            add(entered)
            entered += 1
        mapper.step()
        if bar is not None:
            bar.update(1)
        if report_every and ((s + 1) % report_every == 0 or s + 1 == total):
            e0, e1 = score(entered)
            curve.append({"step": s + 1, "frames": entered, "odometry_rmse": e0["rmse"], "refined_rmse": e1["rmse"],
                          "odometry_final": e0["final"], "refined_final": e1["final"]})
            if bar is not None:
                bar.set_postfix(frames=entered, ate_cm=f"{e0['rmse'] * 100:.1f}->{e1['rmse'] * 100:.1f}", refresh=False)
    if bar is not None:
        bar.close()
    e0, e1 = score(n)
    return {"odometry": e0, "refined": e1, "curve": curve, "steps": total, "frames": n,
            "steps_per_frame": steps_per_frame, "extra_steps": extra_steps, "seed": seed,
            "overrides": list(overrides), "seconds": time.perf_counter() - t0}


def _run(args) -> dict:
    # checked here too (run_drift does) so that bad arguments fail before a scene is generated
    if args.steps_per_frame < 0 or args.extra_steps < 0 or args.report_every < 0 or args.frames < 2:
        raise ValueError("--steps-per-frame, --extra-steps and --report-every must be >= 0, --frames >= 2")
    data, stamps, odom = demo_sequence(args.scene, args.frames, progress=not args.quiet)
    return run_drift(data, stamps, odom, args.steps_per_frame, args.extra_steps, args.seed, args.threads, args.set,
                     args.report_every, progress=not args.quiet)


def cmd_benchmark_drift(args) -> int:
    from nerf_mapping.cli.common import exit_on_error, print_and_write_json

    res = exit_on_error(_run, args)
    o, r = res["odometry"], res["refined"]
    print(f"ATE over {res['frames']} frames after {res['steps']} steps ({res['seconds']:.0f} s): "
          f"odometry {o['rmse'] * 100:.2f} cm -> refined {r['rmse'] * 100:.2f} cm RMS "
          f"(rigidly fitted {o['rmse_aligned'] * 100:.2f} -> {r['rmse_aligned'] * 100:.2f}; "
          f"last frame {o['final'] * 100:.2f} -> {r['final'] * 100:.2f})")
    print_and_write_json(res, args.json)
    return 0
