"""Integration test of the ``nerf_mapper`` node over real DDS.

A small demo scene is generated into a temp dir; the node runs as a real subprocess
(``python -m nerf_mapping.ros.mapper_node --ros-args -p ...``) and this process plays the scene's bag (the recorded
CDR bytes published through rclpy, at real time), then checks: status arrives with keyframes, the periodic render
at the latest keyframe pose matches the ground-truth frame with that stamp (PSNR above a threshold), map->odom is
published on /tf and ~/path/refined has a pose per ~/path/odom keyframe (pose refinement on, the default), the services
answer (RenderView size, SaveMap under the output dir, '../evil' refused, ExportMesh writes a mesh under the output
dir, refuses a second export while one runs and bad depths / paths, and publishes the mesh on ~/mesh for late
subscribers), and bad
messages (wrong encoding, step mismatch, NaN quaternion, odometry stamp going backwards) are counted and dropped
while the node keeps publishing.

Isolation: ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, ROS_DOMAIN_ID from the pid, ROS_LOG_DIR in a temp dir.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

try:
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from geometry_msgs.msg import Pose
    from nav_msgs.msg import Odometry, Path as PathMsg
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2
    from std_msgs.msg import String
    from tf2_msgs.msg import TFMessage
    from visualization_msgs.msg import Marker, MarkerArray

    from nerf_mapping_interfaces.msg import MapStatus
    from nerf_mapping_interfaces.srv import ExportMesh, LoadMap, QuerySegmentation, RenderView, SaveMap
except ImportError as exc:  # pragma: no cover - depends on the environment
    pytest.skip(f"ROS 2 python packages not importable ({exc})", allow_module_level=True)

REPO = Path(__file__).resolve().parents[1]
NODE = "/nerf_mapper"
PSNR_THRESHOLD = 15.0  # dB, render at a keyframe pose (noisy odometry) vs the ground-truth frame, 80x60
TRAIN_TIMEOUT = 100.0  # s of waiting for the PSNR after the bag finished (2 shared CPU cores)

MSG_CLASSES = {"sensor_msgs/msg/Image": Image, "sensor_msgs/msg/CameraInfo": CameraInfo,
               "nav_msgs/msg/Odometry": Odometry, "tf2_msgs/msg/TFMessage": TFMessage}


def ros_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_DOMAIN_ID": str(1 + os.getpid() % 100),
                "ROS_LOG_DIR": str(tmp / "ros_log")})
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def read_bag(bag: Path) -> list[tuple[str, str, int, bytes]]:
    """(topic, msgtype, stamp ns, CDR bytes) in log-time order."""
    from rosbags.rosbag2 import Reader

    out = []
    with Reader(bag) as reader:
        for conn, t, raw in reader.messages():
            out.append((conn.topic, conn.msgtype, int(t), bytes(raw)))
    return out


def area_downscale(img: np.ndarray, w: int, h: int) -> np.ndarray:
    k = img.shape[1] // w
    assert k >= 1 and img.shape[0] // k == h, (img.shape, w, h)
    a = img[: h * k, : w * k].astype(np.float64).reshape(h, k, w, k, 3).mean(axis=(1, 3))
    return a


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) / 255.0 - np.asarray(b, np.float64) / 255.0) ** 2))
    return -10.0 * math.log10(max(mse, 1e-12))


class Harness:
    """rclpy side of the test: plays the bag, records status / renders, calls services."""

    def __init__(self, domain_id: int):
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx, domain_id=domain_id)
        self.node = rclpy.create_node("nerf_mapper_test", context=self.ctx)
        self.ex = MultiThreadedExecutor(num_threads=3, context=self.ctx)
        self.ex.add_node(self.node)
        self.status: list[MapStatus] = []
        self.stats: list[dict] = []
        self.rendered: list[Image] = []
        self.paths: dict[str, PathMsg] = {}
        self.map_odom: list = []  # map->odom transforms seen on /tf
        self.lock = threading.Lock()
        n = self.node
        n.create_subscription(MapStatus, f"{NODE}/status", self._on_status, 10)
        n.create_subscription(String, f"{NODE}/input_stats", self._on_stats, 10)
        n.create_subscription(Image, f"{NODE}/rendered", self._on_rendered, 10)
        for name in ("odom", "refined"):
            n.create_subscription(PathMsg, f"{NODE}/path/{name}", lambda m, k=name: self._on_path(k, m), 2)
        n.create_subscription(TFMessage, "/tf", self._on_tf, 10)
        static = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.pubs = {
            "/camera/image_raw": n.create_publisher(Image, "/camera/image_raw", qos_profile_sensor_data),
            "/camera/camera_info": n.create_publisher(CameraInfo, "/camera/camera_info", qos_profile_sensor_data),
            "/odom": n.create_publisher(Odometry, "/odom", qos_profile_sensor_data),
            "/tf_static": n.create_publisher(TFMessage, "/tf_static", static),
            "/camera/labels": n.create_publisher(Image, "/camera/labels", qos_profile_sensor_data),
            "/camera/depth/image_raw": n.create_publisher(Image, "/camera/depth/image_raw", qos_profile_sensor_data),
            "/lidar/points": n.create_publisher(PointCloud2, "/lidar/points", qos_profile_sensor_data),
        }
        self.thread = threading.Thread(target=self.ex.spin, daemon=True)
        self.thread.start()

    def _on_status(self, msg):
        with self.lock:
            self.status.append(msg)

    def _on_stats(self, msg):
        with self.lock:
            self.stats.append(json.loads(msg.data))

    def _on_rendered(self, msg):
        with self.lock:
            self.rendered.append(msg)

    def _on_path(self, name, msg):
        with self.lock:
            self.paths[name] = msg

    def _on_tf(self, msg):
        with self.lock:
            self.map_odom += [t for t in msg.transforms if (t.header.frame_id, t.child_frame_id) == ("map", "odom")]

    def wait_for(self, pred, timeout: float, what: str):
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if pred():
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")

    def play(self, messages, rate: float = 1.0):
        """Publish recorded CDR bytes at ``rate`` x real time (GT odometry is skipped)."""
        t_bag0 = messages[0][2]
        t0 = time.monotonic()
        for topic, _, stamp, raw in messages:
            pub = self.pubs.get(topic)
            if pub is None:
                continue
            delay = (stamp - t_bag0) * 1e-9 / rate - (time.monotonic() - t0)
            if delay > 0:
                time.sleep(delay)
            pub.publish(raw)

    def call(self, srv_type, name: str, req, timeout: float = 60.0):
        cli = self.node.create_client(srv_type, f"{NODE}/{name}")
        try:
            assert cli.wait_for_service(timeout_sec=20.0), f"service {name} not available"
            t0 = time.monotonic()
            fut = cli.call_async(req)
            self.wait_for(fut.done, timeout, f"{name} response")
            return fut.result(), time.monotonic() - t0
        finally:
            self.node.destroy_client(cli)

    def call_async(self, srv_type, name: str, req):
        """(client, future) of a request left running; destroy the client when done."""
        cli = self.node.create_client(srv_type, f"{NODE}/{name}")
        assert cli.wait_for_service(timeout_sec=20.0), f"service {name} not available"
        return cli, cli.call_async(req)

    def latched(self, msg_type, topic: str) -> list:
        """Subscribe now (transient local, reliable) and collect what arrives, e.g. a mesh published earlier."""
        got: list = []
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.node.create_subscription(msg_type, topic, got.append, qos)
        return got

    def close(self):
        self.ex.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.ctx)


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    from nerf_mapping.scene import SceneConfig, generate_scene

    out = tmp_path_factory.mktemp("mapper_scene") / "scene"
    generate_scene(SceneConfig(seed=0, frames=40, width=160, height=120), out, progress=False)
    return out


def _start_node(tmp: Path, env: dict, out_dir: Path, *params: str, log_name: str = "node.log"):
    cmd = [sys.executable, "-m", "nerf_mapping.ros.mapper_node", "--ros-args",
           "--params-file", str(REPO / "config" / "mapper.yaml"), "-p", f"output_dir:={out_dir}",
           "-p", "training.threads:=2", "-p", "keyframe.min_translation:=0.03", "-p", "keyframe.min_rotation_deg:=3.0"]
    for p in params:
        cmd += ["-p", p]
    log = open(tmp / log_name, "w")
    return subprocess.Popen(cmd, cwd=str(REPO), env=env, stdout=log, stderr=subprocess.STDOUT), log


def _stop(proc) -> None:
    """Terminate a node process (SIGTERM, then SIGKILL after 15 s)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def mapper(scene, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mapper_run")
    env = ros_env(tmp)
    out_dir = tmp / "maps"
    # the default automatic extent, as a user runs it
    # an RGB-D camera and a LiDAR on the rig (the scene's simulated sensors), as the README demo's rgbd run plus LiDAR
    proc, log = _start_node(tmp, env, out_dir, "render_period_s:=2.0", "semantics.teacher:=labels",
                            f"semantics.class_names:={scene / 'labels.json'}",
                            "depth_topic:=/camera/depth/image_raw", "points_topic:=/lidar/points")
    saved = {k: os.environ.get(k) for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID", "ROS_LOG_DIR")}
    os.environ.update({k: env[k] for k in saved})
    h = None
    try:
        h = Harness(int(env["ROS_DOMAIN_ID"]))
        yield {"proc": proc, "h": h, "out_dir": out_dir, "log": tmp / "node.log", "scene": scene}
    finally:
        if h is not None:
            h.close()
        _stop(proc)
        log.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _gt_images(scene: Path) -> dict[int, np.ndarray]:
    from PIL import Image as PILImage

    tf = json.loads((scene / "transforms.json").read_text())
    return {int(f["timestamp_ns"]): np.asarray(PILImage.open(scene / f["file_path"]).convert("RGB"))
            for f in tf["frames"]}


def test_mapper_end_to_end(mapper):
    h: Harness = mapper["h"]
    proc = mapper["proc"]
    # the node is up when its status arrives
    try:
        h.wait_for(lambda: len(h.status) > 0, 60, "first ~/status")
    except AssertionError:
        raise AssertionError("no status; node log:\n" + mapper["log"].read_text()[-3000:]) from None
    msgs = read_bag(mapper["scene"] / "bag")
    t_play = time.monotonic()
    h.play(msgs, rate=1.0)
    n_images = sum(1 for m in msgs if m[0] == "/camera/image_raw")
    h.wait_for(lambda: h.status and h.status[-1].keyframes > 0, 30, "keyframes > 0")
    try:  # best-effort transport: wait for all images, tolerate a rare loss
        h.wait_for(lambda: h.status[-1].images_received >= n_images, 10, "all images received")
    except AssertionError:
        pass
    st = h.status[-1]
    assert st.images_received >= n_images - 3, st
    assert st.images_dropped == 0, (st, h.stats[-1] if h.stats else None)

    # --- bad messages are counted and dropped, the node keeps working
    before = h.status[-1].images_dropped
    bad = Image(height=4, width=4, encoding="yuv422_weird", step=12, data=bytes(48))
    bad.header.stamp.sec = 1_800_000_000
    h.pubs["/camera/image_raw"].publish(bad)
    bad2 = Image(height=4, width=4, encoding="rgb8", step=12, data=bytes(40))  # step * height != len(data)
    bad2.header.stamp.sec = 1_800_000_001
    h.pubs["/camera/image_raw"].publish(bad2)
    odo = Odometry()
    odo.header.frame_id = "odom"
    odo.header.stamp.sec = 1_800_000_000
    odo.pose.pose.orientation.w = float("nan")
    h.pubs["/odom"].publish(odo)
    odo2 = Odometry()
    odo2.header.frame_id = "odom"
    from nerf_mapping.ros import conversions as conv

    last_odom_ns = max(m[2] for m in msgs if m[0] == "/odom")
    # 0.3 s older than the bag's last odometry: reordering, dropped as "stamp backwards" (a jump back of more than
    # time_jump_s would restart intake instead, as a looping player does)
    odo2.header.stamp = conv.ns_to_stamp(last_odom_ns - 300_000_000)
    odo2.pose.pose.orientation.w = 1.0
    h.pubs["/odom"].publish(odo2)
    h.wait_for(lambda: h.status[-1].images_dropped >= before + 2, 20, "2 bad images counted as dropped")
    h.wait_for(lambda: h.stats and h.stats[-1].get("odom_invalid", 0) >= 1
               and h.stats[-1].get("odom_stamp_backwards", 0) >= 1, 20, "bad odometry counted")
    assert proc.poll() is None, "node died on bad input"

    # --- the map learns: a render at a keyframe pose approaches the ground-truth frame
    gt = _gt_images(mapper["scene"])
    best = {"psnr": -1.0}

    def learned():
        with h.lock:
            renders = list(h.rendered[-3:])
        for m in renders:
            s = m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec
            if s not in gt:
                continue
            assert m.encoding == "rgb8"
            img = np.frombuffer(bytes(m.data), np.uint8).reshape(m.height, m.width, 3)
            p = psnr(img, area_downscale(gt[s], m.width, m.height))
            if p > best["psnr"]:
                best.update(psnr=p, t=time.monotonic() - t_play, steps=h.status[-1].steps)
        return best["psnr"] >= PSNR_THRESHOLD

    try:
        h.wait_for(learned, TRAIN_TIMEOUT, f"rendered PSNR >= {PSNR_THRESHOLD} dB")
    finally:
        print(f"\nbest rendered PSNR {best}", file=sys.stderr)
    assert h.rendered, "no ~/rendered"
    last = h.status[-1]
    assert last.steps > 0 and last.training and last.keyframes > 0

    # --- pose refinement (on by default): map->odom on /tf, a refined pose per odometry keyframe
    def paths_agree():
        with h.lock:
            po, pr = h.paths.get("odom"), h.paths.get("refined")
        return po is not None and pr is not None and len(po.poses) > 0 and len(po.poses) == len(pr.poses)

    h.wait_for(paths_agree, 10, "~/path/odom and ~/path/refined with equal lengths")
    with h.lock:
        po, pr = h.paths["odom"], h.paths["refined"]
    assert (po.header.frame_id, pr.header.frame_id) == ("odom", "map")
    assert [p.header.stamp for p in po.poses] == [p.header.stamp for p in pr.poses]
    h.wait_for(lambda: len(h.map_odom) > 0, 10, "map->odom on /tf")
    q = h.map_odom[-1].transform.rotation
    assert abs(q.x * q.x + q.y * q.y + q.z * q.z + q.w * q.w - 1.0) < 1e-6
    assert math.isfinite(last.pose_correction_rot_deg) and math.isfinite(last.pose_correction_trans)

    # --- services answer while training runs
    pose = Pose()
    pose.position.x, pose.position.z = 0.0, 1.4
    pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = -0.5, 0.5, -0.5, 0.5
    res, dt = h.call(RenderView, "render_view", RenderView.Request(pose=pose, width=32, height=24))
    assert res.success, res.message
    assert (res.rgb.width, res.rgb.height, res.rgb.encoding) == (32, 24, "rgb8")
    assert (res.depth.width, res.depth.height, res.depth.encoding) == (32, 24, "32FC1")
    print(f"render_view 32x24 latency while training: {dt:.2f} s", file=sys.stderr)
    res, _ = h.call(RenderView, "render_view", RenderView.Request(pose=pose, width=5000, height=24))
    assert not res.success and "width/height" in res.message
    bad_pose = Pose()
    bad_pose.orientation.w = 3.0
    res, _ = h.call(RenderView, "render_view", RenderView.Request(pose=bad_pose, width=32, height=24))
    assert not res.success and "quaternion" in res.message

    res, dt = h.call(SaveMap, "save_map", SaveMap.Request(filename="test_map"))
    assert res.success, res.message
    out_dir = mapper["out_dir"].resolve()
    assert Path(res.path).is_file() and Path(res.path).parent == out_dir and res.path.endswith(".pt")
    print(f"save_map latency while training: {dt:.2f} s", file=sys.stderr)
    # the range inputs reached the keyframes: depth images matched by stamp, LiDAR returns through /tf_static
    s = h.stats[-1]
    assert s.get("depth_received", 0) >= n_images - 3 and s.get("points_received", 0) > 0, s
    assert not s.get("depth_invalid") and not s.get("points_invalid") and not s.get("points_no_tf"), s
    import torch

    saved = torch.load(res.path, map_location="cpu", weights_only=True)
    depths, ranges = saved["extra"]["keyframe_depths"], saved["extra"]["keyframe_ranges"]
    assert sum(int(d.numel() > 0) for d in depths) >= 0.8 * len(depths), "keyframes without depth"
    assert sum(int(r.shape[0] > 0) for r in ranges) >= 0.8 * len(ranges), "keyframes without LiDAR returns"
    grid = saved["grid"]
    assert bool(grid["hit"].any()) and bool(grid["free"].any()), "range data did not carve the occupancy grid"
    for evil in ("../evil", "/tmp/evil", "a/../../evil"):
        res, _ = h.call(SaveMap, "save_map", SaveMap.Request(filename=evil))
        assert not res.success, evil
    assert not (out_dir.parent / "evil.pt").exists()

    res, dt = h.call(LoadMap, "load_map", LoadMap.Request(filename="test_map"))
    assert res.success, res.message
    print(f"load_map latency while training: {dt:.2f} s", file=sys.stderr)
    res, _ = h.call(LoadMap, "load_map", LoadMap.Request(filename="../evil"))
    assert not res.success
    h.wait_for(lambda: h.status[-1].keyframes > 0 and h.status[-1].training, 20, "training after load_map")

    # ExportMesh: a second request while one runs is refused, not queued; the mesh lands under the output dir
    cli, fut = h.call_async(ExportMesh, "export_mesh", ExportMesh.Request(depth=7, filename="meshes/test_mesh"))
    time.sleep(0.5)
    res2, _ = h.call(ExportMesh, "export_mesh", ExportMesh.Request(depth=7, filename="other.ply"))
    h.wait_for(fut.done, 120, "export_mesh response")
    res, dt = fut.result(), 0.0
    h.node.destroy_client(cli)
    assert res.success, res.message
    assert not res2.success and "busy" in res2.message, res2.message
    assert not (out_dir / "other.ply").exists()
    mesh_path = Path(res.path)
    assert mesh_path == out_dir / "meshes" / "test_mesh.ply" and mesh_path.is_file(), res.path
    assert res.n_triangles > 1000 and res.n_vertices > 500, res.message
    import open3d as o3d

    m = o3d.io.read_triangle_mesh(str(mesh_path))
    assert len(m.triangles) == res.n_triangles and m.has_vertex_colors()
    print(f"export_mesh while training: {res.message}", file=sys.stderr)
    # a subscriber that joins after the export still gets the mesh (transient local), in the map frame
    got = h.latched(MarkerArray, f"{NODE}/mesh")
    h.wait_for(lambda: len(got) > 0, 20, "~/mesh MarkerArray")
    tri = [mk for mk in got[-1].markers if mk.type == Marker.TRIANGLE_LIST]
    assert got[-1].markers[0].action == Marker.DELETEALL and tri
    assert all(mk.header.frame_id == "map" for mk in tri)
    n_pts = sum(len(mk.points) for mk in tri)
    assert n_pts % 3 == 0 and 0 < n_pts // 3 <= 50000 and all(len(mk.colors) == len(mk.points) for mk in tri)
    for bad in (ExportMesh.Request(depth=13, filename="d13.ply"), ExportMesh.Request(filename="../evil.ply"),
                ExportMesh.Request(filename="/tmp/evil.ply")):
        res, _ = h.call(ExportMesh, "export_mesh", bad)
        assert not res.success, bad
    assert not (out_dir / "d13.ply").exists() and not (out_dir.parent / "evil.ply").exists()
    # --- open-vocabulary segmentation: the labels teacher learnt from /camera/labels while mapping
    got_seg = h.latched(PointCloud2, f"{NODE}/segmentation")
    got_img = h.latched(Image, f"{NODE}/segmentation/image")
    # A synonym of a class name ('sofa') needs a language field that has settled: measured on this 40-frame scene
    # (offline, the same mapper), 'couch' matched nothing at 80 steps and 8-18k of ~90k points at 120 in every
    # extent mode, while 'sofa' itself matched from 80; a query at ~120 steps here (after a map reload) matched 0 or 1.
    h.wait_for(lambda: h.status[-1].steps >= 200, 120, "200 training steps before the text query")
    res, _ = h.call(QuerySegmentation, "query_segmentation", QuerySegmentation.Request(text="couch"), timeout=120)
    print(f"query_segmentation: {res.message} ({res.seconds:.2f} s)", file=sys.stderr)
    assert res.success, res.message
    cloud = res.cloud
    assert res.teacher == "labels" and cloud.header.frame_id == "map"
    assert [f.name for f in cloud.fields] == ["x", "y", "z", "rgb", "relevancy"]
    assert 0 < res.num_points == cloud.width <= res.num_candidates
    rel = np.frombuffer(bytes(cloud.data), "<f4").reshape(cloud.width, 5)[:, 4]
    assert rel.min() >= 0.5 and rel.max() <= 1.0
    h.wait_for(lambda: len(got_seg) > 0 and got_seg[-1].width == cloud.width, 20, "~/segmentation PointCloud2")
    h.wait_for(lambda: len(got_img) > 0, 60, "~/segmentation/image")
    assert got_img[-1].encoding == "rgb8" and got_img[-1].width > 0
    floor, _ = h.call(QuerySegmentation, "query_segmentation", QuerySegmentation.Request(text="floor", threshold=0.5))
    assert floor.success and floor.num_candidates == res.num_candidates  # cached candidates
    for bad, why in ((QuerySegmentation.Request(text="  "), "empty"),
                     (QuerySegmentation.Request(text="x" * 2000), "longer than"),
                     (QuerySegmentation.Request(text="chair", threshold=float("nan")), "threshold"),
                     (QuerySegmentation.Request(text="chair", threshold=1.5), "threshold"),
                     (QuerySegmentation.Request(text="chair", negatives=["a"] * 40), "negatives")):
        r, _ = h.call(QuerySegmentation, "query_segmentation", bad)
        assert not r.success and why in r.message, (why, r.message)

    # still alive and publishing after everything above
    n = len(h.status)
    h.wait_for(lambda: len(h.status) > n + 1, 10, "status after the service calls")
    assert proc.poll() is None


def test_node_survives_sigkill_and_resumes_from_its_autosave(scene, tmp_path):
    """SIGKILL mid-run, restart with resume:=true: the keyframes and step count of the newest complete autosave come
    back, and a render of a keyframe view is as good as the same render from that save file."""
    import signal

    import torch

    from nerf_mapping.geometry import model_c2w_to_optical_pose
    from nerf_mapping.mapping import autosave
    from nerf_mapping.mapping.map_io import load_map
    from nerf_mapping.ros import conversions as conv

    env = ros_env(tmp_path)
    env["ROS_DOMAIN_ID"] = str(51 + os.getpid() % 48)  # apart from the module's running node
    out_dir = tmp_path / "maps"
    save_dir = out_dir / "autosave"
    h = Harness(int(env["ROS_DOMAIN_ID"]))
    procs = []
    try:
        proc, log = _start_node(tmp_path, env, out_dir, "autosave_period_s:=3.0", "render_period_s:=0.0")
        procs.append((proc, log))
        h.wait_for(lambda: len(h.status) > 0, 60, "first ~/status")
        msgs = read_bag(scene / "bag")
        h.play([m for m in msgs if m[0] != "/camera/labels"], rate=2.0)
        h.wait_for(lambda: h.status[-1].steps >= 40, 120, "40 training steps")
        h.wait_for(lambda: (p := autosave.latest_complete(save_dir)) is not None
                   and int(p.name.split("_")[1]) >= 40, 60, "an autosave after 40 steps")
        proc.send_signal(signal.SIGKILL)
        t_kill = time.monotonic()
        proc.wait(timeout=10)
        last = autosave.latest_complete(save_dir)
        age = time.time() - int(last.name.split("_")[2].split(".")[0]) / 1000.0
        steps_at_kill = h.status[-1].steps
        print(f"killed at step ~{steps_at_kill}; newest complete autosave {last.name}, {age:.1f} s old", file=sys.stderr)

        tr, _ = load_map(last)
        fid = tr.frames.frame_ids()[len(tr.frames) // 2]
        cam = tr.frames.camera(fid)
        img = tr.frames.image(fid).numpy()
        ref = (tr.render(cam, 0)["rgb"].clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
        psnr_save = psnr(ref, img)

        h.status.clear()
        proc, log = _start_node(tmp_path, env, out_dir, "resume:=true", "training.enabled:=false",
                                "render_period_s:=0.0", log_name="node_resumed.log")
        procs.append((proc, log))
        h.wait_for(lambda: len(h.status) > 0 and h.status[-1].keyframes > 0, 60, "status of the resumed node")
        assert (h.status[-1].keyframes, h.status[-1].steps) == (len(tr.frames), tr.step_count)
        info = next(m for m in msgs if m[0] == "/camera/camera_info")
        h.pubs["/camera/camera_info"].publish(info[3])  # RenderView scales the camera's intrinsics
        time.sleep(0.5)
        req = RenderView.Request(width=int(cam.width[0]), height=int(cam.height[0]))
        req.pose = conv.matrix_to_pose_msg(model_c2w_to_optical_pose(cam.c2w[0].double().numpy()))
        res, _ = h.call(RenderView, "render_view", req)
        assert res.success, res.message
        psnr_after = psnr(conv.image_msg_to_array(res.rgb), img)
        print(f"keyframe render PSNR: save file {psnr_save:.2f} dB, resumed node {psnr_after:.2f} dB; "
              f"{time.monotonic() - t_kill:.1f} s from kill to answer", file=sys.stderr)
        assert psnr_after >= psnr_save - 0.5
        assert "resumed from autosave_" in (tmp_path / "node_resumed.log").read_text()
    finally:
        h.close()
        for proc, log in procs:
            _stop(proc)
            log.close()


def test_node_counts_every_message_of_a_malformed_flood(tmp_path, monkeypatch):
    """A burst of malformed messages over DDS at a running node (images with unknown encodings, step / size
    mismatches, truncated data, invalid stamps; camera infos with bad intrinsics; odometry with NaN or non-unit
    quaternions and NaN positions; label images of a bad encoding): the node drops each one, counts it under its
    reason, the counters add up to exactly what was sent, and it keeps answering services."""
    from builtin_interfaces.msg import Time

    rng = np.random.default_rng(0)
    env = ros_env(tmp_path)
    env["ROS_DOMAIN_ID"] = str(150 + os.getpid() % 60)  # apart from the other tests' nodes
    for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_LOG_DIR"):  # this process discovers like the node
        monkeypatch.setenv(k, env[k])
    h = Harness(int(env["ROS_DOMAIN_ID"]))
    proc, log = _start_node(tmp_path, env, tmp_path / "maps", "render_period_s:=0.0", "autosave_period_s:=0.0",
                            "semantics.teacher:=labels", "depth_topic:=/camera/depth/image_raw",
                            "points_topic:=/lidar/points",
                            log_name="node_flood.log")
    try:
        h.wait_for(lambda: len(h.status) > 0, 60, "first ~/status")
        time.sleep(1.0)  # discovery of this process's publishers

        def image(i: int) -> Image:
            w, hgt = int(rng.integers(1, 40)), int(rng.integers(1, 40))
            kind = i % 4
            msg = Image(height=hgt, width=w, encoding="rgb8", step=3 * w, data=bytes(3 * w * hgt))
            if kind == 0:
                msg.encoding = str(rng.choice(["yuv422_weird", "", "RGB9", "bayer_xyz", "32FC7"]))
            elif kind == 1:
                msg.data = bytes(max(0, 3 * w * hgt - int(rng.integers(1, 3 * w * hgt + 1))))  # truncated
            elif kind == 2:
                msg.step = int(rng.integers(0, 3 * w))  # step shorter than a row
            else:
                msg.header.stamp = Time(sec=int(rng.integers(-2**31, 0)), nanosec=0)  # before the epoch
            if kind != 3:
                msg.header.stamp = Time(sec=1_800_000_000 + i, nanosec=0)
            return msg

        def info(i: int) -> CameraInfo:
            msg = CameraInfo(width=64, height=48, distortion_model="plumb_bob", d=[0.0] * 5)
            k = [50.0, 0.0, 32.0, 0.0, 50.0, 24.0, 0.0, 0.0, 1.0]
            if i % 3 == 0:
                k[0] = -float(rng.uniform(1, 100))  # negative focal length
            elif i % 3 == 1:
                k[4] = float("nan")
            else:
                msg.width = 0
            msg.k = k
            return msg

        def odom(i: int) -> Odometry:
            msg = Odometry()
            msg.header.stamp = Time(sec=1_800_000_000 + i, nanosec=0)
            msg.header.frame_id = "odom"
            q = msg.pose.pose.orientation
            if i % 3 == 0:
                q.x, q.y, q.z, q.w = (float(v) for v in rng.uniform(0.8, 2.0, 4))  # not unit
            elif i % 3 == 1:
                q.w = float("nan")
            else:
                q.w = 1.0
                msg.pose.pose.position.x = float("inf")
            return msg

        def labels(i: int) -> Image:
            msg = Image(height=4, width=4, encoding=str(rng.choice(["rgb8", "32FC1", "bgra8"])), step=4, data=bytes(16))
            msg.header.stamp = Time(sec=1_800_000_000 + i, nanosec=0)
            return msg

        def depth(i: int) -> Image:
            w, hgt = 8, 6
            kind = i % 5
            if kind == 0:  # an encoding a depth image never has
                msg = Image(height=hgt, width=w, encoding="rgb8", step=3 * w, data=bytes(3 * w * hgt))
            elif kind == 1:  # truncated
                msg = Image(height=hgt, width=w, encoding="16UC1", step=2 * w, data=bytes(2 * w * hgt - 3))
            elif kind == 2:  # all no-return
                msg = Image(height=hgt, width=w, encoding="16UC1", step=2 * w, data=bytes(2 * w * hgt))
            elif kind == 3:  # NaN and negative metres: no return anywhere
                vals = np.where(rng.random(w * hgt) < 0.5, np.nan, -rng.uniform(0.1, 5, w * hgt)).astype("<f4")
                msg = Image(height=hgt, width=w, encoding="32FC1", step=4 * w, data=vals.tobytes())
            else:  # a step shorter than a row
                msg = Image(height=hgt, width=w, encoding="16UC1", step=w, data=bytes(2 * w * hgt))
            msg.header.stamp = Time(sec=1_800_000_000 + i, nanosec=0)
            return msg

        def cloud(i: int) -> PointCloud2:
            from sensor_msgs.msg import PointField

            n = 50
            xyz = rng.normal(size=(n, 3)).astype("<f4")
            fields = [PointField(name=c, offset=4 * k, datatype=7, count=1) for k, c in enumerate("xyz")]
            msg = PointCloud2(height=1, width=n, fields=fields, point_step=12, row_step=12 * n, data=xyz.tobytes(),
                              is_dense=True)
            msg.header.frame_id = "lidar"
            kind = i % 5
            if kind == 0:
                msg.fields = fields[:2]  # no z
            elif kind == 1:
                msg.point_step = 8  # smaller than the fields it declares
            elif kind == 2:
                msg.data = xyz.tobytes()[:-7]  # truncated
            elif kind == 3:
                msg.data = np.full((n, 3), np.nan, "<f4").tobytes()  # every point a no-return
            else:
                msg.header.frame_id = ""  # no frame to resolve
            msg.header.stamp = Time(sec=1_800_000_000 + i, nanosec=0)
            return msg

        sent = {"image": 120, "camera_info": 45, "odom": 60, "labels": 30, "depth": 40, "points": 40}
        queue = ([("/camera/image_raw", image(i)) for i in range(sent["image"])]
                 + [("/camera/depth/image_raw", depth(i)) for i in range(sent["depth"])]
                 + [("/lidar/points", cloud(i)) for i in range(sent["points"])]
                 + [("/camera/camera_info", info(i)) for i in range(sent["camera_info"])]
                 + [("/odom", odom(i)) for i in range(sent["odom"])]
                 + [("/camera/labels", labels(i)) for i in range(sent["labels"])])
        order = rng.permutation(len(queue))
        t0 = time.monotonic()
        for j in order:  # 200 Hz: a burst, paced so that best-effort DDS delivers it whole
            topic, msg = queue[j]
            h.pubs[topic].publish(msg)
            time.sleep(0.005)
        print(f"flood: {len(queue)} malformed messages in {time.monotonic() - t0:.1f} s", file=sys.stderr)

        def counted() -> bool:
            s = h.stats[-1] if h.stats else {}
            return (s.get("images_received", 0) >= sent["image"]
                    and s.get("camera_info_invalid", 0) >= sent["camera_info"]
                    and s.get("odom_invalid", 0) >= sent["odom"] and s.get("labels_invalid", 0) >= sent["labels"]
                    and s.get("depth_invalid", 0) + s.get("depth_empty", 0) >= sent["depth"]
                    and sum(v for k, v in s.items() if k.startswith("points_")) >= sent["points"])

        try:
            h.wait_for(counted, 30, "every malformed message counted")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; sent {sent}, last input stats {h.stats[-1] if h.stats else None}") from None
        time.sleep(1.5)  # a later stats message: nothing more arrives
        s = h.stats[-1]
        print(f"input stats after the flood: {s}", file=sys.stderr)
        assert s["images_received"] == s["images_dropped"] == sent["image"]
        assert sum(v for k, v in s.items() if k.startswith("image_")) == sent["image"]
        assert s["camera_info_invalid"] == sent["camera_info"] and s["odom_invalid"] == sent["odom"]
        assert s["labels_invalid"] == sent["labels"] and s.get("labels_received", 0) == 0
        assert s.get("depth_invalid", 0) + s.get("depth_empty", 0) == sent["depth"] and not s.get("depth_received")
        assert s.get("points_invalid", 0) + s.get("points_empty", 0) + s.get("points_no_frame", 0) == sent["points"]
        assert not s.get("points_received"), s
        assert s["keyframes"] == 0 and proc.poll() is None, "node died or took a malformed frame"
        res, _ = h.call(SaveMap, "save_map", SaveMap.Request(filename="after_flood.pt"))
        assert res.success, res.message  # still answering (an empty map saves)
        # the output folder becomes unusable (a file where the folder was): the save fails with an answer that says
        # so, the node lives on, and saves again once the folder is back
        maps = tmp_path / "maps"
        shutil.rmtree(maps)
        maps.write_text("not a folder")
        res, _ = h.call(SaveMap, "save_map", SaveMap.Request(filename="blocked.pt"))
        assert not res.success and res.message, res
        print(f"SaveMap on a blocked output folder: {res.message}", file=sys.stderr)
        maps.unlink()
        res, _ = h.call(SaveMap, "save_map", SaveMap.Request(filename="again.pt"))
        assert res.success and (maps / "again.pt").is_file() and proc.poll() is None, res.message
    finally:
        h.close()
        _stop(proc)
        log.close()


def test_soak_short_run_stays_healthy(tiny_scene, tmp_path):
    """``nerf-mapping soak`` for 60 s on a small scene whose bag loops several times (the stamps jump back at every
    loop): node and player do not crash, every RenderView / SaveMap answers successfully, intake restarts at each loop,
    training goes on and the node's memory stays bounded. (The 30-minute measurement: docs/results/reliability.md.)"""
    env = ros_env(tmp_path)
    env["ROS_DOMAIN_ID"] = str(210 + os.getpid() % 20)
    out = tmp_path / "soak"
    cmd = [sys.executable, "-m", "nerf_mapping.cli", "soak", "--minutes", "1.0", "--scene", str(tiny_scene),
           "--render-every", "6", "--save-every", "15", "--sample-every", "1", "--output", str(out),
           "--json", str(out / "soak.json"), "--max-rss-growth-mb-per-min", "300"]  # 60 s cannot measure a leak
    p = subprocess.run(cmd, cwd=str(REPO), env=env, capture_output=True, text=True, timeout=400)
    print(p.stdout[-3000:], p.stderr[-3000:], file=sys.stderr)
    res = json.loads((out / "soak.json").read_text())
    assert not res["crashed"] and res["launch_exit_code"] == 0, res["launch_errors"]
    assert not any(res["failed_calls"].values()), res["failed_calls"]
    assert res["render_view_seconds"]["n"] >= 4 and res["save_map_seconds"]["n"] >= 2
    # RenderView answers within its budget (render_budget_s, 1 s) even on the early, hazy map, which rendered at full
    # size took 5-25 s on 2 loaded cores; the margin is for DDS transport and a loaded CI machine
    assert res["render_view_seconds"]["max"] < 3.0, res["render_view_seconds"]
    assert res["loops"] >= 2  # the 24-frame bag looped: intake restarted each time
    # training goes on between the service calls (the rate itself is a measurement, docs/results/reliability.md)
    assert res["keyframes_last"] > 0 and res["steps_per_second_second_half"] > 0.1
    assert res["rss_mb_max"] < 1500, res["rss_mb_max"]  # the node's RSS swings by ~50 MB; the 30-min run: ~600 MB
    assert res["healthy"] and p.returncode == 0
    assert (out / "soak.png").is_file()
