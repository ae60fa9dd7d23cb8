"""The ROS 2 demo (the README's main command): the mapping node and the bag player run as real processes over DDS
on the built-in demo scene; this process watches them like a user with RViz would, scores the node's renders
against the scene's ground truth until the map passes a quality bar, calls the services, and saves everything.

Outputs in ``--output``: ``summary.json``, ``status.jsonl`` (every MapStatus), ``renders/`` (the node's periodic
renders next to ground truth, and a RenderView answer), ``paths.json`` (odometry, refined and ground-truth keyframe
paths: stamps and base_link positions), ``map/`` (SaveMap checkpoint, ExportMesh mesh), ``logs/`` (node and player logs).

Inputs (``--inputs``, :data:`DEMO_INPUTS`): the bag carries colour images, a depth camera and a LiDAR; ``rgb`` maps
from the images alone, ``rgbd`` (the default) also from the depth camera (node parameter ``depth_topic``),
``rgb+lidar`` from the images and the LiDAR sweeps (``points_topic``). ``summary.json["inputs"]`` records the choice.

Mesh accuracy: ``summary.json["export_mesh"]`` scores the ExportMesh answer against the scene's ground-truth mesh
exactly as ``benchmark mesh`` does (:func:`nerf_mapping.evaluation.mesh.score_reconstruction`: ``chamfer_rel``,
``fscore_2pct``, ... in fractions of the scene box diagonal, against the ground truth seen by the views), the views
being every frame of the bag (what the node mapped from).

Trajectory error: ``summary.json["ate"]`` scores ``~/path/odom`` (raw odometry) and ``~/path/refined`` (pose
refinement) against the ground-truth base_link positions at the same stamps: RMSE unaligned (the map frame starts at
the first odometry pose, which is the ground truth at t0) and after a rigid SE(3) Umeyama fit, plus the error of the
last pose, in metres.
"""
from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from nerf_mapping.geometry import model_c2w_to_optical_pose
from nerf_mapping.scene.bag import TOPIC_DEPTH, TOPIC_IMAGE, TOPIC_POINTS


DEMO_INPUTS = {
    "rgb": {"depth_topic": "", "points_topic": ""},
    "rgbd": {"depth_topic": TOPIC_DEPTH, "points_topic": ""},
    "rgb+lidar": {"depth_topic": "", "points_topic": TOPIC_POINTS},
}
"""``--inputs`` -> the node's range-input parameters (an empty topic turns that input off), on the demo bag's
topics."""
DEFAULT_INPUTS = "rgbd"

PSNR_MILESTONES = (20.0, 25.0)
"""PSNR levels (dB against ground truth, with ``--psnr-bar``) whose first periodic render is timed in ``summary.json``
(seconds from the first frame; the renders come about once a second or less often, so the times are as coarse as the render period)."""


@functools.lru_cache(maxsize=4)
def _scene_odometry(scene: Path) -> dict:
    """The scene's odometry.npz as arrays, read once (the live ATE reads it every progress line)."""
    with np.load(scene / "odometry.npz") as d:
        return {k: d[k] for k in d.files}


def gt_base_positions(scene: Path, stamps_ns) -> np.ndarray:
    """Ground-truth base_link positions [N,3] at ``stamps_ns``: exact at image stamps (ground-truth camera pose and
    the scene's base->camera extrinsic), else interpolated in the 50 Hz ground-truth odometry."""
    from nerf_mapping.evaluation.trajectory import interpolate_positions
    from nerf_mapping.geometry.rigid import inv_pose

    d = _scene_odometry(Path(scene))
    img_t = np.asarray(d["image_stamps_ns"], dtype=np.int64)
    base_at_img = (d["camera_gt_opencv"] @ inv_pose(d["extrinsic_base_to_camera_optical"]))[:, :3, 3]
    out = interpolate_positions(stamps_ns, d["odom_stamps_ns"], d["odom_gt"][:, :3, 3])
    t = np.asarray(stamps_ns, dtype=np.int64)
    idx = np.clip(np.searchsorted(img_t, t), 0, len(img_t) - 1)
    exact = img_t[idx] == t
    out[exact] = base_at_img[idx[exact]]
    return out


def trajectory_errors(scene: Path, paths: dict) -> dict:
    """ATE of every collected path (``{"odom"|"refined": {"stamps_ns": [...], "xyz": [...]}}``) against ground
    truth; also stores the ground-truth positions into ``paths["ground_truth"]``."""
    from nerf_mapping.evaluation.trajectory import ate

    out = {}
    for name in ("odom", "refined"):
        p = paths.get(name)
        if not p or not p["stamps_ns"]:
            continue
        gt = gt_base_positions(scene, p["stamps_ns"])
        out[name] = ate(p["xyz"], gt)
        if name == "odom":
            paths["ground_truth"] = {"stamps_ns": list(p["stamps_ns"]), "xyz": gt.tolist()}
    return out


def _fmt_ate(ate: dict) -> str:
    parts = []
    for name in ("odom", "refined"):
        a = ate.get(name)
        if a and a["n"]:
            parts.append(f"{name} {a['rmse'] * 100:.1f} cm (aligned {a['rmse_aligned'] * 100:.1f} cm, final "
                         f"{a['final'] * 100:.1f} cm)")
    n = (ate.get("odom") or {}).get("n", 0)
    return f"ATE vs ground truth over {n} keyframes: " + "; ".join(parts) if parts else "ATE: no paths received"


def _live_ate(scene: Path, paths: dict) -> str:
    """Progress-line suffix: unaligned ATE of the odometry and refined paths so far (empty until both arrive)."""
    try:
        a = trajectory_errors(scene, paths)
        return f" ATE odom {a['odom']['rmse'] * 100:.1f} cm refined {a['refined']['rmse'] * 100:.1f} cm"
    except Exception:  # noqa: BLE001 - paths not there yet, or not scorable: the progress line goes on without it
        return ""


def _resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((w, h), Image.BOX))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    from nerf_mapping.evaluation import psnr_from_mse

    return psnr_from_mse(float(np.mean((a.astype(np.float64) / 255 - b.astype(np.float64) / 255) ** 2)))


def _write_params(out: Path, scene: Path, inputs: str = DEFAULT_INPUTS, viewer_port: int = 0,
                  sets: list[str] | None = None) -> Path:
    """The node's parameter file of the demo: the shipped defaults, the demo's (output directory, the label teacher,
    the input topics, the viewer port) and ``sets`` (``NAME=VALUE``, dotted node parameter names, YAML values: the
    node validates them as it validates any parameter file). ValueError names a malformed ``sets`` item."""
    import yaml

    from nerf_mapping.config.params import apply_sets
    from nerf_mapping.mapping.config import MapperConfig
    from nerf_mapping.ros.bringup import default_params_file
    from nerf_mapping.ros.params import NodeConfig

    src = default_params_file()
    params = yaml.safe_load(src.read_text()) if src else {"nerf_mapper": {"ros__parameters": {}}}
    p = params["nerf_mapper"]["ros__parameters"]
    p["output_dir"] = str(out / "map")
    # the scene's label images (/camera/labels in the bag) teach the language field: the oracle teacher
    p.setdefault("semantics", {}).update(teacher="labels", class_names=str(scene / "labels.json"))
    p.update(DEMO_INPUTS[inputs])
    p.setdefault("viewer", {})["port"] = int(viewer_port)  # the browser viewer (0 = none)
    for item in sets or []:
        # checked as `--set` is everywhere (config.params.apply_sets: a known node parameter, a value of its type),
        # then written as the YAML value into the parameter file
        try:
            apply_sets(MapperConfig(), [item])
        except ValueError as exc:
            try:
                apply_sets(NodeConfig(), [item])
            except ValueError:
                raise ValueError(f"--set {item!r}: {exc}") from None
        name, _, value = (t.strip() for t in item.partition("="))
        *groups, leaf = name.split(".")
        node = p
        for k in groups:
            node = node.setdefault(k, {})
        node[leaf] = yaml.safe_load(value) if value else ""
    dst = out / "mapper.yaml"
    dst.write_text(yaml.safe_dump(params, sort_keys=False))
    return dst


def run(args) -> int:
    import imageio.v3 as iio

    from nerf_mapping.scene import ensure_default_scene, ground_truth_frames

    out = Path(args.output).resolve()
    (out / "renders").mkdir(parents=True, exist_ok=True)
    inputs = getattr(args, "inputs", DEFAULT_INPUTS)
    if inputs not in DEMO_INPUTS:
        print(f"error: --inputs must be one of {', '.join(DEMO_INPUTS)}, got {inputs!r}", file=sys.stderr)
        return 2
    scene = ensure_default_scene(progress=True)
    bag = scene / "bag"
    stamps, gt_paths, gt_c2w = ground_truth_frames(scene)
    gt_cache: dict[int, np.ndarray] = {}

    env = dict(os.environ)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env.setdefault("ROS_LOG_DIR", str(out / "logs" / "ros"))
    os.environ.update({k: env[k] for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_LOG_DIR")})
    viewer_port = max(0, int(getattr(args, "viewer_port", 0) or 0))
    try:
        params = _write_params(out, scene, inputs, viewer_port, list(getattr(args, "set", None) or []))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"demo scene: {scene}\ninputs: {describe_inputs(inputs)}\nstarting node + bag player (logs in "
          f"{out / 'logs'}) ...", flush=True)
    if viewer_port:
        print(f"browser viewer: http://127.0.0.1:{viewer_port}  (the live map; if that port is busy the node takes the "
              f"next free one: see {out / 'logs'})", flush=True)
    launch = subprocess.Popen(
        [sys.executable, "-m", "nerf_mapping.cli", "launch", "--bag", str(bag), "--params", str(params), "--loop",
         "--quiet", "--log-dir", str(out / "logs")], env=env, start_new_session=True)

    import rclpy
    from nav_msgs.msg import Path as PathMsg
    from rclpy.executors import MultiThreadedExecutor
    from sensor_msgs.msg import Image

    from nerf_mapping.ros import conversions as conv
    from nerf_mapping_interfaces.msg import MapStatus

    rclpy.init()
    node = rclpy.create_node("nerf_mapping_demo")
    lock = threading.Lock()
    state = {"status": None, "best_psnr": -1.0, "renders": [], "paths": {}, "t_first_frame": None,
             "t_psnr": {b: None for b in sorted({*PSNR_MILESTONES, args.psnr_bar})}}
    status_log = open(out / "status.jsonl", "w")
    t_start = time.monotonic()

    def on_status(msg: MapStatus):
        row = {"t": round(time.monotonic() - t_start, 2), "keyframes": msg.keyframes,
               "images_received": msg.images_received, "images_dropped": msg.images_dropped, "steps": msg.steps,
               "loss": msg.loss, "psnr": msg.psnr, "rays_per_second": msg.rays_per_second,
               "pose_correction_rot_deg": msg.pose_correction_rot_deg, "training": msg.training}
        status_log.write(json.dumps(row) + "\n")
        status_log.flush()
        with lock:
            state["status"] = row
            if msg.images_received > 0 and state["t_first_frame"] is None:
                state["t_first_frame"] = time.monotonic()

    def on_rendered(msg: Image):
        try:
            img = conv.image_msg_to_array(msg)
        except ValueError:
            return
        ns = conv.stamp_to_ns(msg.header.stamp)
        i = int(np.argmin([abs(s - ns) for s in stamps]))
        if i not in gt_cache:
            gt_cache[i] = iio.imread(gt_paths[i])[..., :3]
        gt = _resize(gt_cache[i], img.shape[1], img.shape[0])
        p = _psnr(img, gt)
        with lock:
            k = len(state["renders"])
            state["renders"].append({"t": round(time.monotonic() - t_start, 2), "frame": i, "psnr": p})
            if p > state["best_psnr"]:
                state["best_psnr"] = p
            for b, t in state["t_psnr"].items():
                if p >= b and t is None:
                    state["t_psnr"][b] = time.monotonic()
        iio.imwrite(out / "renders" / f"live_{k:03d}_frame{i:04d}_gt_vs_render.png", np.concatenate([gt, img], 1))

    def on_path(name):
        def cb(msg: PathMsg):
            with lock:
                state["paths"][name] = {
                    "frame_id": msg.header.frame_id,
                    "stamps_ns": [conv.stamp_to_ns(p.header.stamp) for p in msg.poses],
                    "xyz": [[p.pose.position.x, p.pose.position.y, p.pose.position.z] for p in msg.poses]}
        return cb

    node.create_subscription(MapStatus, "/nerf_mapper/status", on_status, 10)
    node.create_subscription(Image, "/nerf_mapper/rendered", on_rendered, 2)
    node.create_subscription(PathMsg, "/nerf_mapper/path/odom", on_path("odom"), 2)
    node.create_subscription(PathMsg, "/nerf_mapper/path/refined", on_path("refined"), 2)
    ex = MultiThreadedExecutor(num_threads=2)
    ex.add_node(node)
    spin = threading.Thread(target=ex.spin, daemon=True)
    spin.start()

    services = {}
    mesh_scores = None
    rc = 0
    try:
        deadline = time.monotonic() + args.timeout
        last_print = 0.0
        while time.monotonic() < deadline:
            if launch.poll() is not None:
                print(f"error: the node/player bring-up exited with code {launch.returncode}")
                rc = 1
                break
            with lock:
                st, best, hit = state["status"], state["best_psnr"], state["t_psnr"][args.psnr_bar]
                t_first = state["t_first_frame"]
                paths = dict(state["paths"])
            if time.monotonic() - last_print > 10 and st:
                last_print = time.monotonic()
                print(f"  t={st['t']:5.0f}s keyframes={st['keyframes']} steps={st['steps']} "
                      f"train-PSNR={st['psnr']:.1f} best render PSNR vs ground truth={best:.1f} dB"
                      f"{_live_ate(scene, paths)}", flush=True)
            if hit is not None and t_first is not None and time.monotonic() - t_first >= args.min_seconds:
                break
            time.sleep(0.5)
        services = _call_services(node, out, gt_c2w, gt_paths, args.psnr_bar) if rc == 0 else {}
        sofa_file = services.get("query_segmentation", {}).get("sofa_points_file")
        if sofa_file:
            try:
                services["query_segmentation"]["sofa_accuracy"] = score_query_points(scene, Path(sofa_file))
            except Exception as exc:  # noqa: BLE001 - a scoring problem must not lose the other outputs
                services["query_segmentation"]["sofa_accuracy"] = {"error": repr(exc)}
        mesh_path = services.get("export_mesh", {}).get("path")
        if mesh_path:
            print("scoring the exported mesh against the ground truth (as benchmark mesh does) ...", flush=True)
            try:
                mesh_scores = score_export_mesh(scene, Path(mesh_path))
            except Exception as exc:  # noqa: BLE001 - a scoring problem must not lose the other outputs
                mesh_scores = {"path": mesh_path, "error": repr(exc)}
    finally:
        with lock:
            to_level = {f"{b:g}": (t - state["t_first_frame"]) if t and state["t_first_frame"] else None
                        for b, t in state["t_psnr"].items()}
            try:
                ate = trajectory_errors(scene, state["paths"])
            except Exception as exc:  # noqa: BLE001 - a scoring problem must not lose the other outputs
                ate = {"error": repr(exc)}
            summary = {
                "scene": str(scene), "inputs": inputs, "input_topics": DEMO_INPUTS[inputs],
                "psnr_bar_db": args.psnr_bar,
                "reached_bar": state["t_psnr"][args.psnr_bar] is not None,
                "seconds_first_frame_to_bar": to_level[f"{args.psnr_bar:g}"],
                "seconds_first_frame_to_psnr": to_level,
                "best_render_psnr_db": state["best_psnr"], "last_status": state["status"],
                "ate": ate, "export_mesh": mesh_scores, "n_renders": len(state["renders"]),
                "renders": state["renders"], "services": services,
            }
            (out / "paths.json").write_text(json.dumps(state["paths"]))
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        status_log.close()
        launch.send_signal(signal.SIGINT)
        try:
            launch.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(launch.pid, signal.SIGKILL)
        cpu_file = out / "map" / "cpu_threads.json"  # the node's CPU by thread, written as it stopped
        if cpu_file.is_file():
            try:
                summary["node_cpu_cores_by_thread"] = json.loads(cpu_file.read_text())
                (out / "summary.json").write_text(json.dumps(summary, indent=2))
            except ValueError as exc:
                print(f"warning: {cpu_file}: {exc}", file=sys.stderr)
        ex.shutdown()
        # the spin thread must have left rclpy before the interpreter exits: a daemon thread still inside the
        # executor's C++ wait aborted the demo at exit ("terminate called without an active exception", exit 134)
        spin.join(timeout=10)
        node.destroy_node()
        rclpy.try_shutdown()
    print(f"\nmap quality bar ({args.psnr_bar:.0f} dB vs ground truth) "
          f"{'reached after %.0f s' % summary['seconds_first_frame_to_bar'] if summary['reached_bar'] else 'NOT reached'}"
          f"; best render PSNR {summary['best_render_psnr_db']:.1f} dB; "
          + ", ".join(f"{b} dB " + ("after %.0f s" % t if t is not None else "not reached")
                      for b, t in summary["seconds_first_frame_to_psnr"].items()))
    print(_fmt_ate(ate) if "error" not in ate else f"ATE failed: {ate['error']}")
    print(f"inputs: {describe_inputs(inputs)}")
    if mesh_scores:
        print(_fmt_mesh(mesh_scores))
    for k, v in services.items():
        print(f"  service {k}: {v.get('message', '')} ({v.get('seconds', 0):.2f} s)")
    if summary.get("node_cpu_cores_by_thread"):
        print("node CPU by thread (average cores): " + ", ".join(
            f"{k} {v:.2f}" for k, v in summary["node_cpu_cores_by_thread"].items()))
    print(f"outputs in {out}: summary.json, status.jsonl, renders/, paths.json, map/ (map, mesh), logs/")
    if (out / "map" / "demo_map.pt").is_file():
        print(f"browse the saved map: nerf-mapping view --checkpoint {out / 'map' / 'demo_map.pt'}")
    return rc if summary["reached_bar"] or rc else 2


def describe_inputs(inputs: str) -> str:
    topics = DEMO_INPUTS[inputs]
    used = [TOPIC_IMAGE] + [t for t in (topics["depth_topic"], topics["points_topic"]) if t]
    return f"{inputs} ({', '.join(used)})"


def score_query_points(scene: Path, points_path: Path, class_name: str = "sofa", within_m: float = 0.14) -> dict:
    """How well the points a text query returned sit on the object it names: the distance of each point to the
    ground-truth surface of that class (area-uniform samples of its faces in the scene's mesh; a map-frame = world-frame
    comparison, so pose drift counts, as it does for a user): ``within`` (fraction within ``within_m``) and the
    median distance."""
    import torch

    from nerf_mapping.evaluation.mesh import sample_surface
    from nerf_mapping.scene.layout import CLASSES
    from nerf_mapping.scene.mesh_io import read_labeled_ply

    cid = next(k for k, v in CLASSES.items() if v == class_name)
    gt = read_labeled_ply(Path(scene) / "mesh.ply")
    faces = gt["triangles"][gt["face_class"] == cid]
    if not len(faces):
        raise ValueError(f"the scene mesh has no {class_name!r} faces")
    surf = torch.from_numpy(np.asarray(sample_surface(gt["vertices"], faces, 50_000, 0), dtype=np.float32))
    pts = torch.from_numpy(np.atleast_2d(np.loadtxt(points_path, dtype=np.float32)).reshape(-1, 3))
    d = torch.cat([torch.cdist(c, surf).min(1).values for c in pts.split(2048)]) if len(pts) else torch.zeros(0)
    return {"class": class_name, "points": int(len(pts)), f"within_{round(within_m * 100)}cm":
            float((d <= within_m).float().mean()) if len(pts) else 0.0,
            "median_distance_m": float(d.median()) if len(pts) else None}


def score_export_mesh(scene: Path, mesh_path: Path, samples: int | None = None) -> dict:
    """The exported mesh (map frame = the scene's world frame) against the scene's ground-truth mesh, scored as
    ``benchmark mesh`` scores (:func:`nerf_mapping.evaluation.mesh.score_reconstruction`), the visible truth being
    what the bag's frames (all of the scene's views, with their ground-truth depth) saw. ``samples``: per mesh
    (default: the benchmark's)."""
    import open3d as o3d

    from nerf_mapping.data import load_dataset
    from nerf_mapping.evaluation.mesh import MESH_SAMPLES, score_reconstruction
    from nerf_mapping.scene.mesh_io import read_labeled_ply

    t0 = time.monotonic()
    mesh = o3d.io.read_triangle_mesh(str(mesh_path))
    pred = (np.asarray(mesh.vertices), np.asarray(mesh.triangles))
    if len(pred[1]) == 0:
        raise ValueError(f"{mesh_path} has no triangles")
    gt = read_labeled_ply(Path(scene) / "mesh.ply")
    views = load_dataset(scene, split="all")
    scores, _ = score_reconstruction(pred, (gt["vertices"], gt["triangles"]), views.scene_box.numpy(), views.cameras,
                                     views.depths, samples or MESH_SAMPLES)
    keys = ("chamfer_rel", "fscore_1pct", "fscore_2pct", "precision_2pct", "recall_2pct", "chamfer_rel_full",
            "scene_diagonal", "gt_visible_fraction")
    return {"path": str(mesh_path), **{k: scores[k] for k in keys}, "views": len(views), "samples": samples or MESH_SAMPLES,
            "visible": scores["visible"], "full": scores["full"], "seconds": time.monotonic() - t0}


def _fmt_mesh(m: dict) -> str:
    if "error" in m:
        return f"exported mesh: scoring failed: {m['error']}"
    return (f"exported mesh vs ground truth: Chamfer {m['chamfer_rel'] * 100:.2f} % of the scene diagonal, F-score "
            f"{m['fscore_2pct']:.3f} at 2 % ({m['fscore_1pct']:.3f} at 1 %), precision / recall at 2 % "
            f"{m['precision_2pct']:.3f} / {m['recall_2pct']:.3f}")


def _call_services(node, out: Path, gt_c2w, gt_paths, bar) -> dict:
    import imageio.v3 as iio

    from nerf_mapping.ros import conversions as conv
    from nerf_mapping_interfaces.srv import ExportMesh, QuerySegmentation, RenderView, SaveMap

    res = {}

    def call(name, srv_type, fill):
        cli = node.create_client(srv_type, f"/nerf_mapper/{name}")
        if not cli.wait_for_service(timeout_sec=10):
            res[name] = {"success": False, "message": "service not available", "seconds": 0.0}
            return None
        req = srv_type.Request()
        fill(req)
        t0 = time.monotonic()
        fut = cli.call_async(req)
        while not fut.done() and time.monotonic() - t0 < 120:
            time.sleep(0.02)
        dt = time.monotonic() - t0
        r = fut.result() if fut.done() else None
        res[name] = {"success": bool(getattr(r, "success", r is not None)), "message": getattr(r, "message", ""),
                     "seconds": dt}
        return r

    k = len(gt_c2w) // 2
    T = model_c2w_to_optical_pose(gt_c2w[k][:3])

    def fill_render(req):
        req.pose = conv.matrix_to_pose_msg(T)
        req.width, req.height = 320, 240  # the size issue #40 asks RenderView to answer at full resolution in 1 s

    r = call("render_view", RenderView, fill_render)
    if r is not None and getattr(r, "success", False):
        img = conv.image_msg_to_array(r.rgb)
        gt = _resize(iio.imread(gt_paths[k])[..., :3], img.shape[1], img.shape[0])
        res["render_view"]["psnr_vs_ground_truth"] = _psnr(img, gt)
        iio.imwrite(out / "renders" / "render_view_gt_vs_render.png", np.concatenate([gt, img], 1))
    call("save_map", SaveMap, lambda q: setattr(q, "filename", "demo_map.pt"))
    r = call("export_mesh", ExportMesh, lambda q: setattr(q, "filename", "demo_mesh.ply"))  # the node's depth
    if r is not None and getattr(r, "success", False):
        res["export_mesh"].update(path=r.path, n_triangles=int(r.n_triangles), n_vertices=int(r.n_vertices))
    res["query_segmentation"] = _queries(call, QuerySegmentation, out)
    return res


DEMO_QUERIES = ("sofa", "couch", "chair", "seat", "table", "desk", "plant", "houseplant", "mug", "cup", "lamp",
                "light", "bookshelf", "shelf", "picture", "painting", "floor", "wall", "ceiling", "sofa")
"""Names and synonyms of the demo classes; the first query computes the candidate points, the last repeats it."""


def _queries(call, srv_type, out: Path) -> dict:
    """Text queries on the live map (training continues): points per query, latency (the first one includes the
    candidate points), and the "sofa" result as a PLY beside the map."""
    rows, seconds = [], []
    keep = None
    for text in DEMO_QUERIES:
        r = call("query_segmentation", srv_type, lambda q, t=text: setattr(q, "text", t))
        if r is None or not r.success:
            rows.append({"text": text, "success": False, "message": getattr(r, "message", "no answer")})
            continue
        rows.append({"text": text, "points": int(r.num_points), "candidates": int(r.num_candidates),
                     "seconds": float(r.seconds)})
        seconds.append(float(r.seconds))
        if text == "sofa":
            keep = r
    summary = {"teacher": keep.teacher if keep is not None else "", "queries": rows, "answered": len(seconds)}
    if len(seconds) > 1:
        later = seconds[1:]
        summary.update(first_seconds=seconds[0], seconds_median=float(np.median(later)),
                       seconds_max=float(np.max(later)))
    sofa = next((r for r in rows if r["text"] == "sofa" and "points" in r), None)
    summary["message"] = (f"{len(seconds)}/{len(rows)} queries answered (teacher {summary['teacher'] or '-'})"
                          + (f"; 'sofa': {sofa['points']} of {sofa['candidates']} points" if sofa else "")
                          + (f"; latency median {summary['seconds_median']:.2f} s, max {summary['seconds_max']:.2f} s"
                             f" (first query {summary['first_seconds']:.1f} s: candidate points)"
                             if "seconds_median" in summary else "")
                          + ("" if seconds else f"; {rows[0].get('message', '')}"))
    summary["seconds"] = float(sum(seconds))
    if keep is not None and keep.num_points:
        n, step = int(keep.cloud.width), int(keep.cloud.point_step)
        xyz = np.frombuffer(bytes(keep.cloud.data), dtype="<f4").reshape(n, step // 4)[:, :3]  # x y z come first
        path = out / "map" / "segmentation_sofa.xyz"
        np.savetxt(path, xyz, fmt="%.4f")
        summary["sofa_points_file"] = str(path)
    return summary
