"""``nerf-mapping benchmark online``: how good is the live map of a bag, with default parameters, against offline
training on the same frames for the same seconds?

    nerf-mapping benchmark online --bag BAG [--seconds 150] [--holdout-every 8] [--set key=value] --json OUT.json

Online run: the bag is played in real time (recorded timing, ``--rate``) into the core mapper exactly as the node
feeds it (:class:`nerf_mapping.mapping.mapper.OnlineMapper`: camera info, odometry, /tf_static, images through
the keyframe policy; the periodic render runs, as the node publishes it), with the node's default parameters
(``config/mapper.yaml``) plus ``--set`` overrides (``--set scene_box=[-3,-2.5,-0.2,3,2.5,3]`` for a fixed box instead of the automatic extent). Every ``--holdout-every``-th image is
held out: never given to the mapper. While it runs, like a user: a ``render_view`` of 320x240 at the newest keyframe
every ``--render-every`` seconds (latency), the map saved every ``--snapshot-every`` seconds (``save_map`` time; the
saves are also the snapshots scored afterwards), and the process RSS.

Scoring (after the run, so it costs the live map nothing): each snapshot is loaded and renders the held-out views
seen so far at the pose a user would ask for: the odometry pose at the image's stamp (interpolated) mapped by the
snapshot's map->odom estimate, at the training resolution (``keyframe.max_width``) and with the camera's
distortion. PSNR against the held-out image (area-downscaled): ``live_psnr_series``; the last snapshot gives
``live_psnr_db``. A held-out view's PSNR thus includes the odometry's and the drift estimate's pose error, as a user
would see it.

Offline reference (same process, after the online run): the same non-held-out images through the same keyframe
policy at once (no real-time arrival, no renders, no saves), then ``Trainer.train(time_budget=seconds)`` (the
offline trainer's loop, with its learning-rate decay) on the same mapper config, scored the same way:
``offline_psnr_db``. The gap between the two is what online mapping costs.
"""
from __future__ import annotations

import os
import statistics
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

DEFAULT_TOPICS = {"image": "/camera/image_raw", "compressed": "/camera/image_raw/compressed",
                  "camera_info": "/camera/camera_info", "odom": "/odom", "tf_static": "/tf_static",
                  "depth": "/camera/depth/image_raw", "points": "/lidar/points", "labels": "/camera/labels"}


def add_cli(bs) -> None:
    from nerf_mapping.benchmarks import add_inputs_arg

    q = bs.add_parser("online", help="play a bag into the online mapper in real time with default parameters: live "
                                     "PSNR of held-out views over time vs offline training on the same frames, "
                                     "steps/s, render_view and save_map latency, RSS")
    q.add_argument("--bag", type=Path, required=True, help="rosbag2 directory (e.g. from `nerf-mapping bag convert`)")
    q.add_argument("--seconds", type=float, default=150.0, help="length of the online run and the offline budget")
    q.add_argument("--holdout-every", type=int, default=8, help="every N-th image is held out for scoring")
    q.add_argument("--rate", type=float, default=1.0, help="playback speed factor")
    q.add_argument("--render-every", type=float, default=10.0, help="seconds between render_view calls (320x240)")
    q.add_argument("--snapshot-every", type=float, default=50.0, help="seconds between map saves (scored snapshots)")
    q.add_argument("--max-views", type=int, default=8, help="held-out views scored per snapshot (evenly spaced)")
    q.add_argument("--no-offline", action="store_true", help="skip the offline reference")
    add_inputs_arg(q)
    q.add_argument("--semantics", choices=("off", "labels"), default="off",
                   help="labels: the README demo's full feature set, the language field taught by the bag's label "
                        "images (/camera/labels) with --class-names, its query candidates warmed up as in the node")
    q.add_argument("--class-names", type=Path, default=None,
                   help="--semantics labels: JSON {class id: name} (default: labels.json beside the bag's folder, "
                        "as `scene generate` writes it)")
    q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="mapper parameter override (node parameter names, e.g. scene_box=[-3,-2.5,0,3,2.5,3])")
    q.add_argument("--output", type=Path, default=None, help="snapshots (default: a folder beside --json)")
    q.add_argument("--json", type=Path, default=None)
    q.set_defaults(func=cmd_benchmark_online)


# ------------------------------------------------------------------------------------------------------- the bag
def mapper_config_from(overrides: list[str], threads: int = 0):
    """The node's mapping defaults (``MapperConfig``'s, which the shipped ``config/mapper.yaml`` holds) with
    ``--set`` overrides (dotted parameter names, values parsed as YAML); autosave off (the benchmark saves snapshots
    itself)."""
    from nerf_mapping.config.params import apply_sets
    from nerf_mapping.mapping.config import MapperConfig

    cfg = MapperConfig()
    apply_sets(cfg, overrides)
    cfg.autosave_dir, cfg.autosave_period_s = "", 0.0
    if threads:
        cfg.training = replace(cfg.training, threads=threads)
    return cfg


class BagFeed:
    """The bag's messages dispatched to a mapper as the node's callbacks do; every ``holdout_every``-th image is
    kept aside (stamp, uint8 image) instead. Odometry is recorded for scoring."""

    def __init__(self, bag: Path, holdout_every: int, inputs: str = "rgb", labels: bool = False):
        from nerf_mapping.bags import open_reader

        self.bag = Path(bag)
        self.holdout_every = int(holdout_every)
        if self.holdout_every < 2:
            raise ValueError("--holdout-every must be >= 2")
        self._open = lambda: open_reader(self.bag)
        with self._open() as reader:
            topics = {c.topic: c.msgtype for c in reader.connections}
            self.start_ns, self.end_ns = reader.start_time, reader.end_time
        self.image_topic = next((t for t in (DEFAULT_TOPICS["image"], DEFAULT_TOPICS["compressed"]) if t in topics),
                                None)
        if self.image_topic is None:
            cands = [t for t, m in topics.items() if m.endswith(("/Image", "/CompressedImage")) and "label" not in t]
            if not cands:
                raise ValueError(f"{bag}: no image topic (topics: {sorted(topics)})")
            self.image_topic = cands[0]
        self.topics = topics
        self.inputs = inputs
        self.range_topics = {"rgbd": [DEFAULT_TOPICS["depth"]], "rgb+lidar": [DEFAULT_TOPICS["points"]]}.get(inputs, [])
        for t in self.range_topics:
            if t not in topics:
                raise ValueError(f"{bag}: --inputs {inputs} needs the topic {t} (topics: {sorted(topics)})")
        self.labels = bool(labels)
        if self.labels and DEFAULT_TOPICS["labels"] not in topics:
            raise ValueError(f"{bag}: --semantics labels needs the topic {DEFAULT_TOPICS['labels']} "
                             f"(topics: {sorted(topics)})")
        self.held_out: list[tuple[int, np.ndarray]] = []
        self.odom: list[tuple[int, str, np.ndarray]] = []
        self.images = 0

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) * 1e-9

    def messages(self):
        wanted = {self.image_topic, DEFAULT_TOPICS["camera_info"], DEFAULT_TOPICS["odom"], DEFAULT_TOPICS["tf_static"],
                  *self.range_topics, *([DEFAULT_TOPICS["labels"]] if self.labels else [])}
        with self._open() as reader:
            conns = [c for c in reader.connections if c.topic in wanted]
            for conn, t_ns, raw in reader.messages(connections=conns):
                yield conn.topic, conn.msgtype, t_ns, reader.deserialize(raw, conn.msgtype)

    def attach(self, mapper) -> None:
        """Tell ``mapper`` which range inputs come (as the node does when its topics are set)."""
        mapper.range_input.expect_depth = DEFAULT_TOPICS["depth"] in self.range_topics
        mapper.range_input.expect_points = DEFAULT_TOPICS["points"] in self.range_topics

    def dispatch(self, mapper, topic: str, msgtype: str, msg, hold_out: bool = True) -> None:
        from nerf_mapping import bags

        if topic == DEFAULT_TOPICS["depth"]:
            mapper.range_input.add_depth(bags.stamp_to_ns(msg.header.stamp), msg.header.frame_id,
                                         bags.depth_msg_to_array(msg))
        elif topic == DEFAULT_TOPICS["points"]:
            xyz, times = bags.pointcloud_msg_to_arrays(msg, max_points=mapper.cfg.range_input.max_points_per_scan)
            mapper.range_input.add_points(bags.stamp_to_ns(msg.header.stamp), msg.header.frame_id, xyz, times)
        elif topic == DEFAULT_TOPICS["labels"]:  # a held-out image's labels stay unused in the bounded buffer
            mapper.semantics.add_labels(bags.stamp_to_ns(msg.header.stamp), bags.label_msg_to_array(msg))
        elif topic == self.image_topic:
            decode = bags.compressed_image_to_array if msgtype.endswith("CompressedImage") else bags.image_msg_to_array
            stamp = bags.stamp_to_ns(msg.header.stamp)
            self.images += 1
            if self.images % self.holdout_every == 0:
                if hold_out:
                    self.held_out.append((stamp, decode(msg)))
                return
            mapper.intake.submit_image(stamp, msg.header.frame_id, msg, decode)
        elif topic == DEFAULT_TOPICS["camera_info"]:
            mapper.intake.set_intrinsics(bags.camera_info_to_intrinsics(msg), msg.header.frame_id)
        elif topic == DEFAULT_TOPICS["odom"]:
            stamp = bags.stamp_to_ns(msg.header.stamp)
            T = bags.pose_msg_to_matrix(msg.pose.pose)
            self.odom.append((stamp, msg.header.frame_id, T))
            mapper.intake.add_odometry(stamp, msg.header.frame_id, T)
        elif topic == DEFAULT_TOPICS["tf_static"]:
            for t in msg.transforms:
                mapper.intake.add_static_transform(t.header.frame_id, t.child_frame_id,
                                                   bags.transform_msg_to_matrix(t.transform))


# -------------------------------------------------------------------------------------------------------- scoring
def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def score_map(map_path: Path, cfg, held_out, odom, T_base_cam: np.ndarray, intrinsics: dict) -> dict:
    """PSNR of ``held_out`` [(stamp, image)] rendered by the map in ``map_path`` at the odometry pose of each stamp
    mapped by the map's map->odom estimate, at the training resolution."""
    import torch

    from nerf_mapping.evaluation.images import psnr
    from nerf_mapping.geometry import optical_pose_to_model_c2w
    from nerf_mapping.mapping.keyframes import downscale_factor, downscale_image
    from nerf_mapping.mapping.mapper import OnlineMapper
    from nerf_mapping.mapping.views import RENDER_CHUNK
    from nerf_mapping.mapping.sync import OdometryBuffer

    m = OnlineMapper(replace(cfg, training=replace(cfg.training, enabled=False)))
    m.intake.intrinsics = intrinsics
    m.load(map_path)
    buf = OdometryBuffer(max_age_s=1e9, max_gap_s=1.0, tolerance_s=0.05)
    for stamp, _, T in odom:
        buf.add(stamp, T)
    T_map_odom = m.drift_estimate()
    vals, spr = [], []
    for stamp, image in held_out:
        T_odom_base, _ = buf.pose_at(stamp, count=False)
        if T_odom_base is None:
            continue
        k = downscale_factor(image.shape[1], cfg.keyframe.max_width)
        small = downscale_image(image, k)
        cam = m.intake.keyframe_camera(optical_pose_to_model_c2w(T_map_odom @ T_odom_base @ T_base_cam), 1.0 / k)
        cam.width[:] = small.shape[1]
        cam.height[:] = small.shape[0]
        with torch.no_grad():
            out = m.trainer.render(cam, 0, chunk=RENDER_CHUNK)
        gt = torch.from_numpy(np.array(small, order="C")).float() / 255.0
        vals.append(psnr(out["rgb"].clamp(0, 1), gt))
        spr.append(float(out["n_samples"]) / (small.shape[0] * small.shape[1]))
    return {"psnr_db": float(np.mean(vals)) if vals else float("nan"), "views": len(vals),
            "samples_per_ray_median": float(np.median(spr)) if spr else float("nan"),
            "steps": int(m.trainer.step_count), "keyframes": len(m.trainer.frames)}


def _spaced(items: list, n: int) -> list:
    if len(items) <= n:
        return list(items)
    idx = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in idx]


# ------------------------------------------------------------------------------------------------------ the runs
def run_online(args, cfg, out_dir: Path, log=print) -> tuple[dict, BagFeed, object]:
    from nerf_mapping.mapping.mapper import OnlineMapper

    feed = BagFeed(args.bag, args.holdout_every, getattr(args, "inputs", "rgb"),
                   labels=bool(cfg.semantics.teacher == "labels"))
    renders = [0]
    mapper = OnlineMapper(cfg, on_render=lambda rgb, stamp: renders.__setitem__(0, renders[0] + 1))
    feed.attach(mapper)
    stop = threading.Event()
    rss = [_rss_mb()]
    t0 = time.monotonic()

    def play():
        first = None
        try:
            for topic, msgtype, t_ns, msg in feed.messages():
                first = t_ns if first is None else first
                target = t0 + (t_ns - first) * 1e-9 / args.rate
                while not stop.is_set() and time.monotonic() < target:
                    time.sleep(min(0.02, target - time.monotonic()))
                if stop.is_set():
                    return
                try:
                    feed.dispatch(mapper, topic, msgtype, msg)
                except ValueError as exc:  # a malformed message: the node drops it too
                    mapper.intake.count("benchmark_invalid", f"{topic}: {exc}")
        except Exception as exc:  # noqa: BLE001
            log(f"[online] bag playback failed: {exc!r}")

    def sample_rss():
        while not stop.wait(0.5):
            rss.append(_rss_mb())

    threads = [threading.Thread(target=play, daemon=True), threading.Thread(target=sample_rss, daemon=True)]
    mapper.start()
    for th in threads:
        th.start()
    render_s, render_sizes, save_s, snapshots, steps_series = [], [], [], [], []
    next_render, next_snap, next_log = args.render_every, args.snapshot_every, 10.0
    try:
        while (now := time.monotonic() - t0) < args.seconds:
            time.sleep(0.05)
            if now >= next_render:
                next_render += args.render_every
                kf = mapper.keyframes.info.get(mapper.keyframes.latest)
                if kf is not None:
                    t = time.monotonic()
                    rv = mapper.views.render_view(mapper.drift_estimate() @ kf.T_odom_cam, 320, 240)
                    render_s.append(time.monotonic() - t)
                    render_sizes.append("x".join(map(str, rv["rendered_size"])))
            if now >= next_snap:
                next_snap += args.snapshot_every
                if len(mapper.trainer.frames):
                    path = out_dir / f"online_{len(snapshots):03d}.pt"
                    t = time.monotonic()
                    mapper.save(path)
                    save_s.append(time.monotonic() - t)
                    snapshots.append((round(now, 1), path, len(feed.held_out)))
            if now >= next_log:
                next_log += 10.0
                st = mapper.status()
                steps_series.append((round(now, 1), st["steps"]))
                log(f"[online] {now:5.0f} s  steps {st['steps']:5d}  keyframes {st['keyframes']:3d}  "
                    f"train psnr {st['psnr']:5.2f}  rss {rss[-1]:.0f} MB")
    finally:
        stop.set()
        mapper.stop()
    wall = time.monotonic() - t0
    path = out_dir / "online_final.pt"
    t = time.monotonic()
    mapper.save(path)
    save_s.append(time.monotonic() - t)
    snapshots.append((round(wall, 1), path, len(feed.held_out)))
    steps = int(mapper.trainer.step_count)
    res = {"steps": steps, "steps_per_second": steps / wall, "seconds": wall, "keyframes": len(mapper.trainer.frames),
           "render_view_seconds": [round(x, 3) for x in render_s],
           "render_view_seconds_median": statistics.median(render_s) if render_s else None,
           "render_view_seconds_max": max(render_s) if render_s else None,
           "render_view_rendered_sizes": render_sizes,
           "save_map_seconds": max(save_s), "save_map_seconds_all": [round(x, 3) for x in save_s],
           "rss_max_mb": max(rss), "periodic_renders": renders[0],
           "extent": mapper.extent.summary() if mapper.extent is not None else {
               "scene_box": list(np.concatenate(mapper.trainer.scene.scene_box))},
           "steps_series": steps_series, "input": mapper.input_stats(), "_snapshots": snapshots}
    return res, feed, mapper


def run_offline(args, cfg, feed: BagFeed, out_dir: Path, log=print) -> dict:
    """The same non-held-out images through the keyframe policy at once, then ``seconds`` of offline training."""
    from nerf_mapping.mapping.mapper import OnlineMapper

    # the whole odometry stream is kept: images are fed faster than real time, so they lag behind the odometry
    m = OnlineMapper(replace(cfg, training=replace(cfg.training, enabled=False),
                             sync=replace(cfg.sync, buffer_s=1e9)))
    feed.attach(m)
    m.start()
    try:
        feed.images = 0
        for topic, msgtype, _, msg in feed.messages():
            while m.intake.queue_length > cfg.sync.queue_size // 2:
                time.sleep(0.01)
            try:
                feed.dispatch(m, topic, msgtype, msg, hold_out=False)
            except ValueError:
                pass
        t = time.monotonic()
        while m.intake.queue_length and time.monotonic() - t < 120:
            time.sleep(0.05)
        time.sleep(0.5)
        m._maybe_fix_extent(force=True)
    finally:
        m.stop()
    tr = m.trainer
    if len(tr.frames) == 0:
        raise ValueError("offline: no keyframe was taken from the bag")
    log(f"[offline] {len(tr.frames)} keyframes; training {args.seconds:.0f} s")
    t = time.monotonic()
    tr.train(time_budget=args.seconds, progress=False)
    wall = time.monotonic() - t
    path = out_dir / "offline.pt"
    m.save(path)
    return {"steps": int(tr.step_count), "steps_per_second": tr.step_count / wall, "keyframes": len(tr.frames),
            "path": path}


def run(args, log=print) -> dict:
    import torch

    out_dir = Path(args.output) if args.output else (Path(args.json).with_suffix("") if args.json else
                                                        Path("outputs/benchmark_online"))
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = mapper_config_from(list(args.set))
    if getattr(args, "semantics", "off") == "labels":
        names = args.class_names or Path(args.bag).resolve().parent / "labels.json"
        if not Path(names).is_file():
            raise ValueError(f"--semantics labels: no class names file {names} (give --class-names)")
        cfg.semantics = replace(cfg.semantics, teacher="labels", class_names=str(names))
    load_before = os.getloadavg()[0]
    online, feed, mapper = run_online(args, cfg, out_dir, log)
    if not feed.held_out:
        raise ValueError("no held-out image: the bag has fewer images than --holdout-every")
    T_base_cam = mapper.intake.camera_extrinsic()
    intr = mapper.intake.intrinsics
    del mapper
    snaps = online.pop("_snapshots")
    series = []
    for t, path, n_held in snaps:
        views = _spaced(feed.held_out[:n_held], args.max_views)
        s = score_map(path, cfg, views, feed.odom, T_base_cam, intr)
        series.append({"t": t, "psnr_db": round(s["psnr_db"], 3), "views": s["views"], "steps": s["steps"],
                       "samples_per_ray_median": round(s["samples_per_ray_median"], 2)})
        log(f"[online] t={t:6.1f} s  held-out PSNR {s['psnr_db']:.2f} dB over {s['views']} views")
    final_views = _spaced(feed.held_out, args.max_views)
    res = {"bag": str(args.bag), "inputs": feed.inputs, "semantics": cfg.semantics.teacher or "off",
           "seconds": args.seconds, "holdout_every": args.holdout_every,
           "samples_per_ray_median": series[-1]["samples_per_ray_median"],
           "held_out_views": len(feed.held_out), "scored_views": len(final_views),
           "bag_duration_s": round(feed.duration_s, 1), "overrides": list(args.set),
           "live_psnr_db": series[-1]["psnr_db"], "live_psnr_series": series, **online,
           "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "load_before": load_before}
    if not args.no_offline:
        off = run_offline(args, cfg, feed, out_dir, log)
        s = score_map(off.pop("path"), cfg, final_views, feed.odom, T_base_cam, intr)
        res.update({"offline_psnr_db": round(s["psnr_db"], 3), "offline": off,
                    "gap_db": round(s["psnr_db"] - res["live_psnr_db"], 3)})
        log(f"[offline] held-out PSNR {s['psnr_db']:.2f} dB ({off['steps']} steps)")
    res["load_after"] = os.getloadavg()[0]
    return res


def cmd_benchmark_online(args) -> int:
    from nerf_mapping.cli.common import exit_on_error, print_and_write_json

    res = exit_on_error(run, args)
    keys = ("inputs", "live_psnr_db", "offline_psnr_db", "gap_db", "steps", "steps_per_second",
            "samples_per_ray_median", "render_view_seconds_median",
            "render_view_seconds_max", "save_map_seconds", "rss_max_mb")
    print_and_write_json(res, args.json, {k: res.get(k) for k in keys}, label=None, default=str)
    return 0
