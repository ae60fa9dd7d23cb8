"""``generate`` sub-command: ``nerf-mapping scene generate ...`` / ``python -m nerf_mapping.scene generate ...``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nerf_mapping.scene.generate import SceneConfig
from nerf_mapping.scene.sensors import DepthCameraConfig, LidarConfig

_D = SceneConfig()


def _resolution(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT (e.g. 320x240), got {text!r}") from None
    if w < 8 or h < 8:
        raise argparse.ArgumentTypeError("resolution must be at least 8x8")
    return w, h


CORRIDOR_FRAMES = 300


def add_cli(subparsers) -> argparse.ArgumentParser:
    """Register ``generate`` on the given sub-parsers object (of the ``scene`` command) and return its parser."""
    p = subparsers.add_parser(
        "generate",
        help="render the built-in labeled demo room or corridor (images, depth, labels, range sensors, mesh, "
             "rosbag2)",
        description="Render the built-in labeled indoor demo scene along a handheld trajectory: nerfstudio "
        "transforms.json + RGB/depth/label PNGs, a simulated depth camera and spinning LiDAR (sensor_depth/, "
        "lidar.npz), ground-truth mesh.ply and a rosbag2 with images, camera info, depth images, LiDAR sweeps, "
        "noisy and ground-truth odometry and the static extrinsics.",
    )
    p.add_argument("--output", "-o", type=Path, required=True, help="output folder (created)")
    p.add_argument("--seed", type=int, default=_D.seed, help="scene layout / trajectory / noise seed")
    p.add_argument("--layout", choices=("room", "corridor"), default=_D.layout,
                   help="room: the 5 m x 4 m demo room, one loop around it; corridor: a 30 m corridor with three "
                        "side rooms, walked end to end (a map larger than one room)")
    p.add_argument("--frames", type=int, default=None,
                   help=f"number of images (default {_D.frames} for the room, {CORRIDOR_FRAMES} for the corridor: "
                        "about 1 m/s at the default image rate)")
    p.add_argument("--resolution", type=_resolution, default=(_D.width, _D.height), metavar="WxH",
                   help=f"image size (default {_D.width}x{_D.height})")
    p.add_argument("--fov", type=float, default=_D.hfov_deg, help="horizontal field of view in degrees")
    p.add_argument("--image-rate", type=float, default=_D.image_rate_hz, help="image rate (Hz)")
    p.add_argument("--odom-rate", type=float, default=_D.odom_rate_hz, help="odometry rate (Hz)")
    g = p.add_argument_group("odometry noise (bias random walk + white jitter)")
    g.add_argument("--odom-trans-rw", type=float, default=_D.odom_trans_rw_sigma,
                   help="x/y bias random walk (m/sqrt(s))")
    g.add_argument("--odom-z-rw", type=float, default=_D.odom_z_rw_sigma, help="z bias random walk (m/sqrt(s))")
    g.add_argument("--odom-yaw-rw", type=float, default=_D.odom_yaw_rw_sigma, help="yaw bias random walk (rad/sqrt(s))")
    g.add_argument("--odom-jitter-trans", type=float, default=_D.odom_jitter_trans, help="white jitter std (m)")
    g.add_argument("--odom-jitter-rot", type=float, default=_D.odom_jitter_rot, help="white jitter std (rad)")
    p.add_argument("--bag-storage", choices=("mcap", "sqlite3"), default=_D.bag_storage, help="rosbag2 storage plugin")
    p.add_argument("--no-bag", action="store_true", help="skip the rosbag2")
    p.add_argument("--supersample", type=int, default=_D.supersample, help="SxS colour samples per pixel")
    p.add_argument("--no-shadows", action="store_true", help="disable cast shadows")
    p.add_argument("--no-depth-camera", action="store_true", help="skip the simulated depth camera")
    p.add_argument("--no-lidar", action="store_true", help="skip the simulated LiDAR")
    p.add_argument("--force", action="store_true", help="write into a non-empty folder that is not a previous scene")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_generate)
    return p


def config_from_args(args: argparse.Namespace) -> SceneConfig:
    return SceneConfig(
        seed=args.seed, layout=args.layout,
        frames=args.frames if args.frames is not None else (CORRIDOR_FRAMES if args.layout == "corridor" else _D.frames),
        width=args.resolution[0], height=args.resolution[1], hfov_deg=args.fov,
        image_rate_hz=args.image_rate, odom_rate_hz=args.odom_rate, odom_trans_rw_sigma=args.odom_trans_rw,
        odom_z_rw_sigma=args.odom_z_rw, odom_yaw_rw_sigma=args.odom_yaw_rw, odom_jitter_trans=args.odom_jitter_trans,
        odom_jitter_rot=args.odom_jitter_rot, bag_storage=args.bag_storage, write_bag=not args.no_bag,
        supersample=args.supersample, shadows=not args.no_shadows,
        depth_camera=DepthCameraConfig(enabled=not args.no_depth_camera), lidar=LidarConfig(enabled=not args.no_lidar))


def run_generate(args: argparse.Namespace) -> int:
    from nerf_mapping.scene.generate import generate_scene

    try:
        cfg = config_from_args(args)
        info = generate_scene(cfg, args.output, progress=not args.quiet, force=args.force)
    except (FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"scene written to {info.root} ({info.num_frames} frames, {info.seconds:.1f} s)")
    print(f"  transforms: {info.transforms}")
    print(f"  mesh:       {info.mesh}")
    if info.bag is not None:
        print(f"  bag:        {info.bag} ({cfg.bag_storage})")
    return 0
