"""ROS sub-commands of ``nerf-mapping``: ``bag play|convert|info``, ``node``, ``launch``.

Registered by ``nerf_mapping.cli`` through :func:`add_cli`. Nothing here imports rclpy or message packages at module
level (handlers import lazily), so ``nerf-mapping --help`` stays fast and the core works on machines without ROS.
Arguments after ``--ros-args`` are passed to rclpy untouched (remappings, ``-p name:=value``, log levels).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NODE_MODULE = "nerf_mapping.ros.mapper_node"


def _add_ros_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ros-args", dest="ros_args", nargs=argparse.REMAINDER, default=[],
                   help="everything after this goes to rclpy (e.g. --ros-args -r /odom:=/robot/odom)")


# ------------------------------------------------------------------------------------------------------------ bag
def _cmd_bag_play(args) -> int:
    from .bag_player import run_play

    return run_play(args, args.ros_args)


def _cmd_bag_convert(args) -> int:
    from .bag_convert import run_convert

    return run_convert(args)


def _cmd_bag_info(args) -> int:
    import json

    from .bag_player import describe_bag

    try:
        info = describe_bag(args.bag)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - rosbags reader errors (not a bag, unknown storage, ...)
        print(f"error: cannot read {args.bag}: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"bag:      {info['path']}")
    print(f"duration: {info['duration_s']:.3f} s  ({info['message_count']} messages)")
    width = max(len(t) for t in info["topics"]) if info["topics"] else 0
    for topic, t in info["topics"].items():
        qos = ", ".join(f"{q['reliability'].lower()}/{q['durability'].lower()}" for q in t["qos"])
        print(f"  {topic:<{width}}  {t['count']:6d}  {t['type']}" + (f"  [{qos}]" if qos else ""))
    return 0


# ----------------------------------------------------------------------------------------------------------- node
def node_argv(params: Path | None, use_sim_time: bool = False, ros_args: list[str] | None = None,
              resume: bool = False) -> list[str]:
    """argv (without program name) for the mapping node: ``--ros-args --params-file FILE [-p use_sim_time:=true]
    [-p resume:=true]``."""
    out: list[str] = []
    if params is not None:
        out += ["--params-file", str(params)]
    if use_sim_time:
        out += ["-p", "use_sim_time:=true"]
    if resume:
        out += ["-p", "resume:=true"]
    out += list(ros_args or [])
    return ["--ros-args", *out] if out else []


def _cmd_node(args) -> int:
    import importlib

    if args.write_params is not None:  # no ROS needed: the file comes from the config dataclasses
        from .params import parameters_yaml

        text = parameters_yaml()
        if str(args.write_params) == "-":
            sys.stdout.write(text)
        else:
            Path(args.write_params).write_text(text)
            print(f"wrote {args.write_params}")
        return 0
    if args.params is not None and not Path(args.params).is_file():
        print(f"error: parameters file {args.params} not found", file=sys.stderr)
        return 2
    try:
        mod = importlib.import_module(NODE_MODULE)
    except ModuleNotFoundError as e:
        if e.name in (NODE_MODULE, "rclpy") or (e.name or "").split(".")[0] in ("rclpy", "sensor_msgs", "nav_msgs"):
            print(f"error: the mapping node is not available ({e}); it needs rclpy and the ROS message packages "
                  f"(and {NODE_MODULE})", file=sys.stderr)
            return 2
        raise
    params = args.params
    if params is None:
        from .bringup import default_params_file

        params = default_params_file()
    return int(mod.main(node_argv(params, args.use_sim_time, args.ros_args, args.resume)) or 0)


# --------------------------------------------------------------------------------------------------------- launch
def _cmd_launch(args) -> int:
    from .bringup import run_bringup

    return run_bringup(args)


def add_cli(subparsers) -> None:
    """Register ``bag`` (play, convert, info), ``node`` and ``launch`` on the top-level sub-parsers."""
    p = subparsers.add_parser("bag", help="rosbag2 tools: play (rclpy), convert a dataset into a bag, info")
    bs = p.add_subparsers(dest="bag_command", required=True)

    q = bs.add_parser("play", help="publish a bag with recorded timing (and /clock)",
                      description="Play a rosbag2 (mcap / sqlite3) with rclpy: recorded timing scaled by --rate, "
                                  "recorded QoS (/tf_static latched), optional /clock for use_sim_time.")
    from .bag_player import add_play_arguments

    add_play_arguments(q)
    _add_ros_args(q)
    q.set_defaults(func=_cmd_bag_play)

    q = bs.add_parser("convert", help="turn a dataset (nerfstudio / Blender / DTU) into a bag like the demo scene's",
                      description="Write images, camera info (with distortion), noisy + ground-truth odometry and "
                                  "the static camera extrinsic from a dataset's poses (see bag_convert.py).")
    from .bag_convert import add_convert_arguments

    add_convert_arguments(q)
    q.set_defaults(func=_cmd_bag_convert)

    q = bs.add_parser("info", help="topics, types, counts, QoS and duration of a bag")
    q.add_argument("bag", type=Path)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_cmd_bag_info)

    p = subparsers.add_parser("node", help="run the mapping node (rclpy) in this process",
                              description="Run the nerf_mapper node: --params FILE becomes --ros-args --params-file "
                                          "FILE (default: the package's config/mapper.yaml).")
    p.add_argument("--params", type=Path, default=None, help="ROS parameters YAML (nerf_mapper: ros__parameters:)")
    p.add_argument("--use-sim-time", action="store_true", help="follow /clock (e.g. from bag play --clock)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest complete autosave in output_dir/autosave (after a crash)")
    p.add_argument("--write-params", type=Path, default=None, metavar="FILE",
                   help="write every parameter with its default and description as a parameters YAML to FILE "
                        "('-': standard output) and exit; the package's config/mapper.yaml is this file")
    _add_ros_args(p)
    p.set_defaults(func=_cmd_node)

    p = subparsers.add_parser("launch", help="start the mapping node + bag player (+ rviz2) as processes",
                              description="Bring-up without ros2 launch: the node and (with --bag) the player run as "
                                          "separate processes with the same parameters file and the package's "
                                          "Fast DDS profile; Ctrl-C stops everything.")
    from .bringup import add_bringup_arguments

    add_bringup_arguments(p)
    p.set_defaults(func=_cmd_launch)
