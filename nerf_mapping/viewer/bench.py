"""What one browser costs the live map, and how fast it refreshes: the demo bag played in real time into a mapper
(as ``benchmark online`` plays it, with the node's defaults), the viewer serving it, and a simulated browser.

    python -m nerf_mapping.viewer.bench [--bag BAG] [--inputs rgbd] [--warmup 40] [--phase 20] [--rounds 2]
                                        [--set KEY=VALUE] [--json OUT.json]

After ``--warmup`` seconds of mapping, ``--rounds`` rounds of three ``--phase``-second phases: ``off`` (the viewer
runs, no browser), ``moving`` (a browser whose camera orbits the keyframes' centre, 30 camera messages a second)
and ``still`` (the same browser, its camera still: measured once its refined render arrived, so only the periodic
refreshes remain). Per phase:
training steps per second, the images sent to the browser per second (``refresh_hz``) and the renders' sizes and
seconds. The summary gives the refresh rate while moving and the training rate of ``moving`` and ``still`` against
``off`` (the targets: >= 2 Hz at 160x120 while training continues; <= 10 % fewer steps with a browser attached).
The simulated browser is the viewer's own camera handler fed directly (:meth:`Viewer.on_camera`), so the
numbers leave out the browser's own CPU (on a 2-core machine a headless browser drawing WebGL in software would
take a core itself).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np


class SimulatedBrowser:
    """What the viewer uses of a viser client: an id, ``camera.fov`` and ``scene.set_background_image`` (recorded)."""

    def __init__(self, client_id: int = 1):
        self.client_id = client_id
        self.sent: list[tuple[float, tuple[int, int]]] = []
        self.camera = SimpleNamespace(fov=1.0)
        self.scene = SimpleNamespace(set_background_image=self._set)

    def _set(self, image, format="jpeg", jpeg_quality=None):
        self.sent.append((time.monotonic(), (int(image.shape[1]), int(image.shape[0]))))


def orbit_pose(centre: np.ndarray, angle: float, radius: float) -> np.ndarray:
    """An optical camera on a circle around ``centre`` looking outwards, level (y down = map -z)."""
    fwd = np.array([math.cos(angle), math.sin(angle), 0.0])
    down = np.array([0.0, 0.0, -1.0])
    T = np.eye(4)
    T[:3, :3] = np.stack([np.cross(down, fwd), down, fwd], axis=1)
    T[:3, 3] = centre + radius * fwd
    return T


def run(args, log=print) -> dict:
    from nerf_mapping.benchmarks.online import BagFeed, mapper_config_from
    from nerf_mapping.mapping.mapper import OnlineMapper
    from nerf_mapping.viewer.config import ViewerConfig
    from nerf_mapping.viewer.viewer import Viewer

    bag = args.bag
    if bag is None:
        from nerf_mapping.scene import ensure_default_scene

        bag = ensure_default_scene(progress=True) / "bag"
    cfg = mapper_config_from(args.set)
    feed = BagFeed(bag, 1 << 30, args.inputs)  # nothing held out
    mapper = OnlineMapper(cfg)
    feed.attach(mapper)
    viewer = Viewer(mapper, ViewerConfig(port=0))
    stop = threading.Event()
    t0 = time.monotonic()

    def play():
        first = None
        for topic, msgtype, t_ns, msg in feed.messages():
            first = t_ns if first is None else first
            while not stop.is_set() and time.monotonic() < t0 + (t_ns - first) * 1e-9:
                time.sleep(0.005)
            if stop.is_set():
                return
            try:
                feed.dispatch(mapper, topic, msgtype, msg, hold_out=False)
            except ValueError as exc:
                mapper.intake.count("benchmark_invalid", f"{topic}: {exc}")

    player = threading.Thread(target=play, daemon=True)
    phases: list[dict] = []
    try:
        mapper.start()
        viewer.start()
        player.start()
        while time.monotonic() - t0 < args.warmup:
            time.sleep(0.5)
        log(f"[viewer bench] warm-up done: {mapper.trainer.step_count} steps, {len(mapper.trainer.frames)} keyframes")
        for r in range(args.rounds):
            browser = SimulatedBrowser(client_id=100 + r)  # a new browser each round (ids are never reused)
            for name in ("off", "moving", "still"):
                poses, _, _ = viewer.keyframe_poses()
                centre = poses[:, :3, 3].mean(0) if len(poses) else np.zeros(3)
                radius = 0.25 * float(np.linalg.norm(np.ptp(poses[:, :3, 3], axis=0))) if len(poses) > 1 else 0.5
                if name == "still":  # the camera stops; its coarse and refined renders belong to the motion
                    viewer.on_camera(browser, orbit_pose(centre, 0.4 * (time.monotonic() - t0), radius), 1.0, 16 / 9)
                    v = viewer._views.get(browser.client_id)
                    t_settle = time.monotonic()
                    while v is not None and time.monotonic() - t_settle < 10 and not (
                            v.done_seq == v.seq and v.done_quality == "refined"):
                        time.sleep(0.05)
                n_sent, renders0 = len(browser.sent), viewer.stats()
                step0, ts = mapper.trainer.step_count, time.monotonic()
                sizes, seconds = [], []
                last = None
                while (now := time.monotonic()) - ts < args.phase:
                    if name == "moving":  # 30 camera messages a second, orbiting at 0.4 rad/s
                        viewer.on_camera(browser, orbit_pose(centre, 0.4 * (now - t0), radius), 1.0, 16 / 9)
                    lr = viewer.stats()["last_render"]
                    if lr and lr.get("at") != last and lr["at"] >= ts:
                        last = lr["at"]
                        sizes.append("x".join(map(str, lr["rendered_size"])))
                        seconds.append(lr["seconds"])
                    time.sleep(1 / 30)
                dt = time.monotonic() - ts
                st = viewer.stats()
                row = {"round": r, "phase": name, "seconds": round(dt, 2),
                       "steps_per_second": (mapper.trainer.step_count - step0) / dt,
                       "refresh_hz": (len(browser.sent) - n_sent) / dt,
                       "renders": {k: st.get(k, 0) - renders0.get(k, 0) for k in
                                   ("renders_coarse", "renders_refined", "renders_refresh")},
                       "render_sizes": sorted(set(sizes)),
                       "render_seconds_median": statistics.median(seconds) if seconds else None,
                       "keyframes": len(mapper.trainer.frames)}
                phases.append(row)
                log(f"[viewer bench] round {r} {name:6s}: {row['steps_per_second']:.2f} steps/s, refresh "
                    f"{row['refresh_hz']:.2f} Hz, renders {row['render_sizes']} "
                    f"(median {row['render_seconds_median']} s), {row['keyframes']} keyframes")
                if name == "still":
                    viewer.on_disconnect(browser.client_id)  # the next "off" phase has no browser
    finally:
        stop.set()
        viewer.stop()
        mapper.stop()

    def mean(phase, key):
        vals = [p[key] for p in phases if p["phase"] == phase and p[key] is not None]
        return float(np.mean(vals)) if vals else None

    off, moving, still = (mean(p, "steps_per_second") for p in ("off", "moving", "still"))
    res = {"bag": str(bag), "inputs": args.inputs, "warmup_s": args.warmup, "phase_s": args.phase,
           "refresh_hz_moving": mean("moving", "refresh_hz"), "steps_per_second": {"off": off, "moving": moving,
                                                                                   "still": still},
           "training_drop_still": 1.0 - still / off if off else None,
           "training_drop_moving": 1.0 - moving / off if off else None,
           "moving_render_sizes": sorted({s for p in phases if p["phase"] == "moving" for s in p["render_sizes"]}),
           "phases": phases}
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nerf_mapping.viewer.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--bag", type=Path, default=None, help="rosbag2 directory (default: the demo scene's bag)")
    ap.add_argument("--inputs", choices=("rgb", "rgbd", "rgb+lidar"), default="rgbd",
                    help="what the mapper maps from (default rgbd, as the README demo)")
    ap.add_argument("--warmup", type=float, default=40.0, help="seconds of mapping before the first phase")
    ap.add_argument("--phase", type=float, default=20.0, help="seconds per phase")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="mapper parameter override")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    res = run(args)
    sp = res["steps_per_second"]
    print(f"refresh while moving: {res['refresh_hz_moving']:.2f} Hz at {', '.join(res['moving_render_sizes'])}; "
          f"training {sp['off']:.2f} steps/s without a browser, {sp['still']:.2f} with a still one "
          f"({100 * res['training_drop_still']:.1f} % fewer), {sp['moving']:.2f} while it moves "
          f"({100 * res['training_drop_moving']:.1f} % fewer)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
