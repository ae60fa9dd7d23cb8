"""``nerf-mapping``: offline training, evaluation, rendering, benchmarks, the demo scene and the demo.

Each sub-command is a thin layer over the core library; heavy imports happen inside the handlers so that
``nerf-mapping --help`` is instant.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from nerf_mapping.cli.common import (add_config_arg, add_impl_arg, configure, exit_on_error, load_data,
                                     load_trainer, print_and_write_json)


# ------------------------------------------------------------------------------------------------------------ train
def cmd_train(args) -> int:
    from nerf_mapping.training.offline import build_trainer, checkpoint_extra
    from nerf_mapping.training.trainer import Trainer

    if args.steps is None and args.time_budget is None:
        args.time_budget = 300.0
    data = load_data(args.data, "train", args.downscale, args.max_frames)
    if args.no_depth:
        data.depths = None  # before the frame store is built: no depth reaches training (RGB-only vs RGB-D runs)
    # --- pose refinement (issue 5): optional synthetic pose noise on the training poses
    from nerf_mapping.cli import poses as pose_cli

    pose_cli.apply_pose_noise(args, data)
    # --- end pose refinement
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    if args.resume:
        from nerf_mapping.training.offline import frame_store_from

        trainer = Trainer.load(args.resume, frames=frame_store_from(data))
        print(f"resumed from {args.resume} at step {trainer.step_count}")
    else:
        cfg = configure(data, args, pose_mode=args.pose_opt, seed=args.seed)
        pose_cli.apply_pose_config(args, cfg)  # --pose-opt / --c2f (issue 5)
        trainer = build_trainer(data, cfg)
    from nerf_mapping.cli import semantics as semantics_cli

    exit_on_error(semantics_cli.attach_teacher, args, trainer, data)  # --teacher: a language field
    print(f"training on {len(data)} frames ({data.format}, {'unbounded' if data.unbounded else 'bounded'}, "
          f"{'with' if data.depths is not None else 'no'} depth), hash encoding: {trainer.field.encoding.impl}")
    summary = trainer.train(max_steps=args.steps, time_budget=args.time_budget, progress=not args.quiet)
    ckpt = out / "checkpoint.pt"
    trainer.save(ckpt, extra={**checkpoint_extra(data, args.data, args.downscale),
                              **pose_cli.train_extra(args, data)})  # pose export / errors (issue 5)
    (out / "train_summary.json").write_text(json.dumps({**summary, "final_train_psnr": trainer.last_stats.get("psnr"),
                                                         "depth": data.depths is not None}, indent=2))
    print(f"{summary['steps']} steps in {summary['train_seconds']:.1f} s "
          f"({summary['rays_per_second']:.0f} rays/s, {summary['samples_per_second'] / 1e6:.2f} M samples/s)")
    print(f"checkpoint: {ckpt}")
    return 0


# ------------------------------------------------------------------------------------------------------------- eval
def cmd_eval(args) -> int:
    from nerf_mapping.evaluation import evaluate

    trainer = load_trainer(args.checkpoint)
    extra = getattr(trainer, "extra", {})
    data_path = args.data or extra.get("data")
    if not data_path:
        raise SystemExit("error: --data is required (the checkpoint does not record its dataset)")
    downscale = args.downscale if args.downscale is not None else int(extra.get("downscale", 1))
    data = load_data(data_path, args.split, downscale, background=tuple(trainer.cfg.background))
    out_dir = Path(args.output_dir) if args.output_dir else Path(args.checkpoint).parent / f"eval_{args.split}"
    indices = list(range(0, len(data), args.every))
    res = evaluate(trainer.render, data, indices, output_dir=out_dir)
    print_and_write_json(res, args.json, {k: v for k, v in res.items() if k != "per_image"}, label="metrics")
    print(f"renders: {out_dir}")
    return 0


# ----------------------------------------------------------------------------------------------------------- render
def cmd_render(args) -> int:
    import torch

    from nerf_mapping.cameras import CAMERA_MODELS, Cameras
    from nerf_mapping.evaluation import to_uint8
    from nerf_mapping.export.camera_path import generate_trajectory, load_camera_path, write_video

    trainer = load_trainer(args.checkpoint)
    extra = getattr(trainer, "extra", {})
    if args.camera_path:
        try:
            cams, fps = load_camera_path(Path(args.camera_path))
        except ValueError as e:
            raise SystemExit(f"error: {e}")
    else:
        if "train_c2w" not in extra:
            raise SystemExit("error: the checkpoint has no training poses; pass --camera-path")
        c2w = generate_trajectory(args.trajectory, extra["train_c2w"], args.frames)
        fx, fy, cx, cy = extra["train_intrinsics"][0].tolist()
        w, h = extra["train_size"][0].tolist()
        s = args.scale
        n = c2w.shape[0]
        cams = Cameras(c2w=c2w, fx=torch.full((n,), fx * s), fy=torch.full((n,), fy * s),
                       cx=torch.full((n,), cx * s), cy=torch.full((n,), cy * s),
                       width=torch.full((n,), int(round(w * s)), dtype=torch.long),
                       height=torch.full((n,), int(round(h * s)), dtype=torch.long),
                       distortion=torch.zeros(n, 6),
                       model=torch.full((n,), CAMERA_MODELS.index("PINHOLE"), dtype=torch.long))
        fps = args.fps
    from tqdm import tqdm

    def frames():
        for i in tqdm(range(len(cams)), desc="render", unit="frame", dynamic_ncols=True):
            yield to_uint8(trainer.render(cams, i)["rgb"])

    write_video(Path(args.output), frames(), fps=fps)
    print(f"video: {args.output}")
    return 0


# -------------------------------------------------------------------------------------------------------- benchmark
def cmd_benchmark(args) -> int:
    from nerf_mapping.benchmarks import images as benchmark

    res = exit_on_error(benchmark.run, args.dataset, args)
    print_and_write_json(res, args.json, {k: v for k, v in res.items() if k not in ("curve", "per_image")})
    return 0


# ------------------------------------------------------------------------------------------------------------- demo
def cmd_demo(args) -> int:
    if args.offline:
        from nerf_mapping.cli import demo

        return demo.run(args)
    from nerf_mapping.ros import demo as ros_demo

    return ros_demo.run(args)


def _register_optional(subparsers, module: str, fn: str = "add_cli") -> None:
    """Let a module register its own sub-commands (keeps each feature's CLI next to its code)."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            return  # feature not present in this build
        raise
    getattr(mod, fn)(subparsers)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="nerf-mapping", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a map on a dataset (nerfstudio / Blender / DTU / 7-Scenes format)")
    p.add_argument("--data", required=True, type=Path)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--time-budget", type=float, help="seconds of training (default 300 when --steps is absent)")
    g.add_argument("--steps", type=int)
    p.add_argument("--downscale", type=int, default=1)
    p.add_argument("--max-frames", type=int, default=None, help="evenly subsample the training frames")
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--resume", type=Path, default=None, help="continue from a checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--no-depth", action="store_true",
                   help="ignore the dataset's depth maps (RGB only); by default depth in the data is trained on")
    add_impl_arg(p)
    add_config_arg(p)
    from nerf_mapping.cli.poses import add_train_args  # --pose-noise-rot-deg/--pose-noise-trans/--pose-opt/--c2f

    add_train_args(p)
    from nerf_mapping.cli.semantics import add_train_args as add_teacher_args  # --teacher / --clip-path

    add_teacher_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="render a split and report PSNR / SSIM (and depth_abs_median_m where the split "
                                    "has depth)")
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--data", type=Path, default=None, help="default: the dataset recorded in the checkpoint")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    p.add_argument("--downscale", type=int, default=None)
    p.add_argument("--every", type=int, default=1, help="evaluate every N-th image of the split")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--output-dir", type=Path, default=None, help="where side-by-side renders go")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("render", help="render videos")
    rs = p.add_subparsers(dest="render_kind", required=True)
    q = rs.add_parser("camera-path", help="render a nerfstudio camera_path.json (or a generated trajectory) to mp4")
    q.add_argument("--checkpoint", required=True, type=Path)
    src = q.add_mutually_exclusive_group(required=True)
    src.add_argument("--camera-path", type=Path)
    src.add_argument("--trajectory", choices=["spiral", "interpolate"])
    q.add_argument("--frames", type=int, default=120)
    q.add_argument("--fps", type=float, default=24.0)
    q.add_argument("--scale", type=float, default=1.0, help="resolution scale for generated trajectories")
    q.add_argument("--output", required=True, type=Path)
    q.set_defaults(func=cmd_render)

    p = sub.add_parser("benchmark", help="reproducible benchmarks on real datasets")
    bs = p.add_subparsers(dest="benchmark_name", required=True)
    for name, desc in (("lego", "NeRF-synthetic lego: 100 train views, test r_0, r_10, ..., r_190"),
                       ("dtu", "DTU scan65: every 8th view held out, masked PSNR"),
                       ("fox", "instant-ngp fox: real capture, OpenCV distortion, unbounded")):
        q = bs.add_parser(name, help=desc)
        q.add_argument("--data", required=True, type=Path)
        q.add_argument("--downscale", type=int, default=None)
        q.add_argument("--time-budget", type=float, default=300.0)
        q.add_argument("--json", type=Path, default=None)
        q.add_argument("--output", type=Path, default=None, help="folder for renders and the PSNR-vs-time plot")
        q.add_argument("--eval-every", type=float, default=30.0,
                       help="training seconds between PSNR-curve points (and the resolution of seconds_to_psnr)")
        add_impl_arg(q)
        add_config_arg(q)
        q.set_defaults(func=cmd_benchmark, dataset=name)
    _register_optional(bs, "nerf_mapping.benchmarks.poses", "add_cli")
    _register_optional(bs, "nerf_mapping.benchmarks.drift", "add_cli")
    _register_optional(bs, "nerf_mapping.benchmarks.mesh", "add_cli")
    _register_optional(bs, "nerf_mapping.benchmarks.segmentation", "add_cli")
    _register_optional(bs, "nerf_mapping.benchmarks.render", "add_cli")
    _register_optional(bs, "nerf_mapping.benchmarks.online", "add_cli")

    p = sub.add_parser("scene", help="the built-in labeled demo scene")
    ss = p.add_subparsers(dest="scene_command", required=True)
    from nerf_mapping.cli.scene import add_cli as scene_add_cli

    scene_add_cli(ss)

    # Feature modules register their own commands: poses (export/inspect), ROS bag tools, node, launch.
    _register_optional(sub, "nerf_mapping.cli.poses", "add_cli")
    _register_optional(sub, "nerf_mapping.cli.export", "add_cli")
    _register_optional(sub, "nerf_mapping.cli.semantics", "add_cli")
    _register_optional(sub, "nerf_mapping.cli.view", "add_cli")  # the browser viewer on a saved map
    _register_optional(sub, "nerf_mapping.ros.cli", "add_cli")
    _register_optional(sub, "nerf_mapping.ros.soak", "add_cli")

    p = sub.add_parser("demo", help="the main job on the bundled demo scene: ROS node + bag player over DDS "
                                     "(--offline: the offline train/eval/video pipeline)")
    p.add_argument("--output", type=Path, default=Path("outputs/demo"))
    p.add_argument("--offline", action="store_true", help="run the offline pipeline instead of the ROS demo")
    p.add_argument("--psnr-bar", type=float, default=20.0,
                   help="ROS demo: stop when a live render reaches this PSNR against ground truth")
    p.add_argument("--min-seconds", type=float, default=90.0,
                   help="ROS demo: keep mapping at least this long after the first frame, even once the bar is "
                        "reached (pose refinement keeps correcting the odometry drift; ATE is printed as it goes)")
    p.add_argument("--timeout", type=float, default=600.0, help="ROS demo: give up after this many seconds")
    p.add_argument("--inputs", choices=("rgb", "rgbd", "rgb+lidar"), default="rgbd",
                   help="ROS demo: what the node maps from: the colour images alone, with the depth camera "
                        "(default), or with the LiDAR sweeps (nerf_mapping.ros.demo.DEMO_INPUTS)")
    p.add_argument("--viewer-port", type=int, default=8080,
                   help="ROS demo: the node's browser viewer on this port (its URL is printed; 0 = no viewer)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="ROS demo: a node parameter over the demo's (dotted name, YAML value; repeat), e.g. "
                        "--set keyframe.revisit_threshold=0.04")
    p.add_argument("--time-budget", type=float, default=120.0, help="offline demo: training seconds")
    p.add_argument("--frames", type=int, default=90, help="offline demo: video frames")
    p.set_defaults(func=cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    rc = args.func(args)
    if rc == 0 and getattr(args, "command", "") not in ("scene",) and str(getattr(args, "write_params", "")) != "-":
        print(f"done in {time.perf_counter() - t0:.1f} s")  # not after a file written to standard output
    return rc


if __name__ == "__main__":
    sys.exit(main())
