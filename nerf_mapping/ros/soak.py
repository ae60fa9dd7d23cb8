"""``nerf-mapping soak``: run the node for a long time and measure whether it stays healthy.

    nerf-mapping soak --minutes 30 [--scene DIR] [--render-every 10] [--save-every 60] --json OUT.json

The node and the bag player run as real processes over DDS (``nerf-mapping launch --loop``: the bag replays
forever, its stamps jumping back at every loop as a restarted player's would), with the default parameters
(``config/mapper.yaml``; output under ``--output``). This process watches them like a user: it samples the node's
resident memory (``/proc/<pid>/status``), its status (keyframes, training steps) and input counters every
``--sample-every`` seconds, calls RenderView (320x240, cycling through the scene's ground-truth views) every
``--render-every`` seconds and SaveMap every ``--save-every`` seconds, timing each answer. At the end it stops the
bring-up with Ctrl-C and records how every process exited.

Written: ``--json`` (summary and every sample) and ``soak.png`` beside it (RSS, steps/s, keyframes and service
latencies over time). The summary says whether the run was healthy: no process crashed, every service call
answered successfully, and the RSS of the second half grew by less than ``--max-rss-growth-mb-per-min``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("soak", help="run node + looping bag player for a long time: RSS, latencies, steps/s, "
                                           "crashes (a reliability measurement)")
    p.add_argument("--minutes", type=float, default=30.0, help="length of the run")
    p.add_argument("--scene", type=Path, default=None,
                   help="a scene written by `nerf-mapping scene generate` (default: the cached demo scene)")
    p.add_argument("--output", type=Path, default=None, help="folder for the map, logs and the plot "
                                                              "(default: beside --json, else outputs/soak)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--sample-every", type=float, default=2.0, help="seconds between RSS / status samples")
    p.add_argument("--render-every", type=float, default=10.0, help="seconds between RenderView calls (0: none)")
    p.add_argument("--save-every", type=float, default=60.0, help="seconds between SaveMap calls (0: none)")
    p.add_argument("--max-rss-growth-mb-per-min", type=float, default=20.0,
                   help="RSS growth over the second half above which the run counts as leaking")
    p.set_defaults(func=cmd_soak)


def rss_mb(pid: int) -> float | None:
    """Resident set size of a process (MB), None when it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def growth_mb_per_min(t_s: list[float], rss: list[float]) -> float:
    """Slope of a least-squares line through the second half of the RSS samples (MB per minute)."""
    if len(t_s) < 4:
        return 0.0
    h = len(t_s) // 2
    t, r = np.asarray(t_s[h:]), np.asarray(rss[h:])
    if float(t[-1] - t[0]) <= 0:
        return 0.0
    return float(np.polyfit(t / 60.0, r, 1)[0])


def _stats(xs: list[float]) -> dict:
    return {"n": len(xs), "median": float(np.median(xs)) if xs else None, "max": float(max(xs)) if xs else None}


def run(args) -> dict:
    from nerf_mapping.geometry import model_c2w_to_optical_pose
    from nerf_mapping.scene import ensure_default_scene, ground_truth_frames

    if args.minutes <= 0:
        raise ValueError("--minutes must be > 0")
    scene = Path(args.scene) if args.scene else ensure_default_scene(progress=True)
    if not (scene / "bag").exists() or not (scene / "transforms.json").is_file():
        raise ValueError(f"{scene}: not a scene written by `nerf-mapping scene generate` (bag/, transforms.json)")
    out = Path(args.output) if args.output else (Path(args.json).parent if args.json else Path("outputs/soak"))
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    _, _, gt_c2w = ground_truth_frames(scene)
    poses = [model_c2w_to_optical_pose(c[:3]) for c in gt_c2w]

    import yaml

    from nerf_mapping.ros.bringup import default_params_file

    src = default_params_file()
    params = yaml.safe_load(src.read_text()) if src else {"nerf_mapper": {"ros__parameters": {}}}
    params["nerf_mapper"]["ros__parameters"]["output_dir"] = str(out / "map")
    (out / "mapper.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    env = dict(os.environ)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env.setdefault("ROS_LOG_DIR", str(out / "logs" / "ros"))
    os.environ.update({k: env[k] for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_LOG_DIR")})
    launch = subprocess.Popen(
        [sys.executable, "-m", "nerf_mapping.cli", "launch", "--bag", str(scene / "bag"), "--params",
         str(out / "mapper.yaml"), "--loop", "--quiet", "--log-dir", str(out / "logs")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    pids: dict[str, int] = {}
    launch_lines: list[str] = []

    def read_launch():
        for raw in iter(launch.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            launch_lines.append(line)
            m = re.match(r"\[launch\] started (\w+) \(pid (\d+)\)", line)
            if m:
                pids[m.group(1)] = int(m.group(2))

    threading.Thread(target=read_launch, daemon=True).start()

    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from std_msgs.msg import String

    from nerf_mapping.ros import conversions as conv
    from nerf_mapping_interfaces.msg import MapStatus
    from nerf_mapping_interfaces.srv import RenderView, SaveMap

    rclpy.init()
    node = rclpy.create_node("nerf_mapping_soak")
    lock = threading.Lock()
    latest: dict = {"status": None, "stats": {}}

    def on_status(msg):
        with lock:
            latest["status"] = {"keyframes": int(msg.keyframes), "steps": int(msg.steps),
                                "images_received": int(msg.images_received), "images_dropped": int(msg.images_dropped),
                                "psnr": float(msg.psnr)}

    def on_stats(msg):
        with lock:
            latest["stats"] = json.loads(msg.data)

    node.create_subscription(MapStatus, "/nerf_mapper/status", on_status, 10)
    node.create_subscription(String, "/nerf_mapper/input_stats", on_stats, 10)
    ex = MultiThreadedExecutor(num_threads=2)
    ex.add_node(node)
    threading.Thread(target=ex.spin, daemon=True).start()
    clients = {"render_view": node.create_client(RenderView, "/nerf_mapper/render_view"),
               "save_map": node.create_client(SaveMap, "/nerf_mapper/save_map")}

    def call(name: str, req, timeout: float = 60.0) -> dict:
        t0 = time.monotonic()
        fut = clients[name].call_async(req)
        while not fut.done() and time.monotonic() - t0 < timeout:
            time.sleep(0.01)
        r = fut.result() if fut.done() else None
        return {"t": round(t0 - t_start, 2), "seconds": time.monotonic() - t0, "success": bool(r and r.success),
                "message": getattr(r, "message", "no answer")}

    samples: list[dict] = []
    calls: dict[str, list[dict]] = {"render_view": [], "save_map": []}
    t_start = time.monotonic()  # reset once the services are up
    k = 0
    rc = None
    try:
        ready = all(c.wait_for_service(timeout_sec=120.0) for c in clients.values())
        if not ready:
            raise RuntimeError("the node's services did not come up within 120 s (see the logs)")
        t_start = time.monotonic()
        end = t_start + args.minutes * 60.0
        next_sample, next_render, next_save = t_start, t_start + args.render_every, t_start + args.save_every
        last_print = t_start
        while time.monotonic() < end:
            rc = launch.poll()
            if rc is not None:
                break
            now = time.monotonic()
            if now >= next_sample:
                next_sample += args.sample_every
                with lock:
                    st, stats = dict(latest["status"] or {}), dict(latest["stats"])
                pid = pids.get("mapper")
                samples.append({"t": round(now - t_start, 2), "rss_mb": rss_mb(pid) if pid else None, **st,
                                "time_jump_back": stats.get("time_jump_back", 0)})
            if args.render_every > 0 and now >= next_render:
                next_render += args.render_every
                req = RenderView.Request(width=320, height=240)
                req.pose = conv.matrix_to_pose_msg(poses[k % len(poses)])
                k += 7
                calls["render_view"].append(call("render_view", req))
            if args.save_every > 0 and now >= next_save:
                next_save += args.save_every
                calls["save_map"].append(call("save_map", SaveMap.Request(filename="soak_map.pt")))
            if now - last_print >= 30 and samples:
                last_print = now
                s = samples[-1]
                rv = calls["render_view"][-1]["seconds"] if calls["render_view"] else float("nan")
                print(f"  t={s['t']:6.0f}s rss={s.get('rss_mb') or 0:7.1f} MB keyframes={s.get('keyframes')} "
                      f"steps={s.get('steps')} render_view={rv:.2f}s loops={s.get('time_jump_back')}", flush=True)
            time.sleep(0.05)
    finally:
        launch.send_signal(signal.SIGINT)
        try:
            launch_rc = launch.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(launch.pid, signal.SIGKILL)
            launch_rc = launch.wait()
        ex.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return summarise(args, samples, calls, rc, launch_rc, launch_lines, out)


def summarise(args, samples, calls, rc_during, launch_rc, launch_lines, out: Path) -> dict:
    t = [s["t"] for s in samples if s.get("rss_mb") is not None]
    rss = [s["rss_mb"] for s in samples if s.get("rss_mb") is not None]
    steps = [(s["t"], s["steps"]) for s in samples if "steps" in s]
    half = len(steps) // 2
    sps = ((steps[-1][1] - steps[half][1]) / max(steps[-1][0] - steps[half][0], 1e-9)) if len(steps) >= 4 else None
    errors = [ln for ln in launch_lines if "error" in ln.lower() or "exited with code" in ln]
    growth = growth_mb_per_min(t, rss)
    failed = {k: [c for c in v if not c["success"]] for k, v in calls.items()}
    res = {
        "minutes": args.minutes,
        "crashed": rc_during is not None or launch_rc != 0,
        "launch_exit_code": launch_rc,
        "launch_errors": errors,
        "rss_mb_first": rss[0] if rss else None,
        "rss_mb_max": max(rss) if rss else None,
        "rss_mb_last": rss[-1] if rss else None,
        "rss_growth_mb_per_min_second_half": growth,
        "steps_per_second_second_half": sps,
        "keyframes_last": samples[-1].get("keyframes") if samples else None,
        "loops": samples[-1].get("time_jump_back") if samples else None,
        "render_view_seconds": _stats([c["seconds"] for c in calls["render_view"] if c["success"]]),
        "save_map_seconds": _stats([c["seconds"] for c in calls["save_map"] if c["success"]]),
        "failed_calls": failed,
        "samples": samples,
        "calls": calls,
    }
    res["healthy"] = (not res["crashed"] and not any(failed.values()) and bool(rss)
                      and growth < args.max_rss_growth_mb_per_min)
    try:
        plot(res, out / "soak.png")
        res["plot"] = str(out / "soak.png")
    except Exception as exc:  # noqa: BLE001 - a plotting problem must not lose the measurement
        res["plot_error"] = repr(exc)
    return res


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = res["samples"]
    fig, ax = plt.subplots(2, 2, figsize=(11, 6.5))
    t = [x["t"] / 60 for x in s if x.get("rss_mb") is not None]
    ax[0, 0].plot(t, [x["rss_mb"] for x in s if x.get("rss_mb") is not None])
    ax[0, 0].set(title="node RSS (MB)", xlabel="minutes")
    st = [(x["t"], x["steps"]) for x in s if "steps" in x]
    if len(st) > 1:
        tt, ss = np.array(st, dtype=float).T
        ax[0, 1].plot(tt[1:] / 60, np.diff(ss) / np.maximum(np.diff(tt), 1e-9))
    ax[0, 1].set(title="training steps / s", xlabel="minutes")
    kf = [(x["t"] / 60, x["keyframes"]) for x in s if "keyframes" in x]
    if kf:
        ax[1, 0].plot(*zip(*kf))
    ax[1, 0].set(title="keyframes", xlabel="minutes")
    for name, c in res["calls"].items():
        if c:
            ax[1, 1].plot([x["t"] / 60 for x in c], [x["seconds"] for x in c], ".", label=name)
    ax[1, 1].set(title="service answer (s)", xlabel="minutes")
    ax[1, 1].legend()
    fig.suptitle(f"soak {res['minutes']:g} min: {'healthy' if res['healthy'] else 'NOT healthy'}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def cmd_soak(args: argparse.Namespace) -> int:
    from nerf_mapping.cli.common import exit_on_error, print_and_write_json

    res = exit_on_error(run, args)
    keys = ("minutes", "healthy", "crashed", "rss_mb_first", "rss_mb_max", "rss_growth_mb_per_min_second_half",
            "steps_per_second_second_half", "keyframes_last", "loops", "render_view_seconds", "save_map_seconds")
    print_and_write_json(res, args.json, {k: res[k] for k in keys})
    return 0 if res["healthy"] else 1
