"""Bag tooling: player (real process, recorded timing, /clock, SIGINT), dataset -> bag conversion, msg_bridge,
``nerf-mapping bag info`` and the ``nerf-mapping launch`` bring-up (with a stub node standing in for the mapper).

Isolation: every ROS process runs with ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, a per-test ROS_DOMAIN_ID derived
from the pid (1..100) and ROS_LOG_DIR in the test's temp dir.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2 Python client) is not installed")
pytest.importorskip("rosbags", reason="rosbags is not installed")

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
_DOMAIN_OFFSETS = itertools.count(17, 29)


def ros_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
                "ROS_DOMAIN_ID": str(1 + (os.getpid() + next(_DOMAIN_OFFSETS)) % 100),
                "ROS_LOG_DIR": str(tmp / "ros_log"), "PYTHONUNBUFFERED": "1"})
    env.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    env.pop("FASTRTPS_DEFAULT_PROFILES_FILE", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def read_bag(bag: Path) -> dict[str, list[tuple[int, object]]]:
    """topic -> [(log time, deserialised message)]"""
    from rosbags.highlevel import AnyReader

    out: dict[str, list] = {}
    with AnyReader([bag]) as r:
        for c, t, raw in r.messages():
            out.setdefault(c.topic, []).append((t, r.deserialize(raw, c.msgtype)))
    return out


def stamp_ns(header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    pytest.importorskip("open3d", reason="the demo scene generator needs open3d")
    from nerf_mapping.scene import SceneConfig, generate_scene

    root = tmp_path_factory.mktemp("scene")
    info = generate_scene(SceneConfig(frames=12, width=80, height=60), root / "s", progress=False)
    return info.bag


class Listener:
    """In-process subscriber on its own rclpy context (domain from ``env``), spun in a thread."""

    def __init__(self, env: dict[str, str]) -> None:
        from nav_msgs.msg import Odometry
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2
        from tf2_msgs.msg import TFMessage

        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx, domain_id=int(env["ROS_DOMAIN_ID"]))
        self.node = rclpy.create_node("bag_tools_listener", context=self.ctx)
        self.msgs: dict[str, list] = {}
        self.lock = threading.Lock()
        q = QoSProfile(depth=200)
        for topic, cls in (("/camera/image_raw", Image), ("/camera/camera_info", CameraInfo), ("/odom", Odometry),
                           ("/ground_truth/odometry", Odometry), ("/clock", Clock), ("/camera/labels", Image),
                           ("/camera/depth/image_raw", Image), ("/lidar/points", PointCloud2)):
            self.node.create_subscription(cls, topic, self._cb(topic), q)
        self.node.create_subscription(TFMessage, "/tf_static", self._cb("/tf_static"),
                                      QoSProfile(depth=10, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _cb(self, topic):
        def f(msg):
            with self.lock:
                self.msgs.setdefault(topic, []).append(msg)
        return f

    def _spin(self):
        while self.ctx.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # noqa: BLE001 - context shut down under us
                break

    def count(self, topic: str) -> int:
        with self.lock:
            return len(self.msgs.get(topic, []))

    def close(self):
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.ctx)
        self.thread.join(timeout=2.0)


# ------------------------------------------------------------------------------------------------------- player
@pytest.mark.parametrize("mode", ["raw", "convert"])
def test_player_publishes_bag_with_timing_and_clock(scene, tmp_path, mode):
    env = ros_env(tmp_path)
    expected = read_bag(scene)
    listener = Listener(env)
    try:
        stats_path = tmp_path / "stats.json"
        rate = 2.0
        cmd = [PY, "-m", "nerf_mapping.ros.bag_player", str(scene), "--rate", str(rate), "--clock",
               "--wait-for", "all", "--wait-timeout", "15", "--stats-json", str(stats_path)]
        if mode == "convert":
            cmd.append("--convert")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=45)
        assert proc.returncode == 0, proc.stderr
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and any(
                listener.count(t) < len(v) for t, v in expected.items()):
            time.sleep(0.05)
    finally:
        listener.close()
    stats = json.loads(stats_path.read_text())
    assert (stats["raw_topics"] if mode == "raw" else stats["converted_topics"])
    for topic, msgs in expected.items():
        assert listener.count(topic) == len(msgs), f"{topic}: {listener.count(topic)} of {len(msgs)} received"
        assert stats["counts"][topic] == len(msgs)

    # images: same pixels, same stamps, same order
    got = listener.msgs["/camera/image_raw"]
    for (t, ref), msg in zip(expected["/camera/image_raw"], got):
        assert stamp_ns(msg.header) == stamp_ns(ref.header) == t
        assert (msg.width, msg.height, msg.encoding, msg.step) == (ref.width, ref.height, ref.encoding, ref.step)
        assert np.array_equal(np.frombuffer(msg.data, np.uint8), np.asarray(ref.data, np.uint8))
    odom = listener.msgs["/odom"]
    assert [stamp_ns(m.header) for m in odom] == [stamp_ns(r.header) for _, r in expected["/odom"]]
    ref0 = expected["/odom"][0][1].pose.pose.position
    assert odom[0].pose.pose.position.x == pytest.approx(ref0.x)
    assert [t.child_frame_id for t in listener.msgs["/tf_static"][0].transforms] == ["camera_optical", "lidar"]
    # the range sensors: 16UC1 depth and PointCloud2 sweeps arrive byte-identical to the bag's (raw or converted)
    for (t, ref), msg in zip(expected["/camera/depth/image_raw"], listener.msgs["/camera/depth/image_raw"]):
        assert stamp_ns(msg.header) == t and (msg.encoding, msg.step, msg.is_bigendian) == ("16UC1", 2 * ref.width, 0)
        assert np.array_equal(np.frombuffer(msg.data, "<u2"), np.frombuffer(bytes(ref.data), "<u2"))
    for (t, ref), msg in zip(expected["/lidar/points"], listener.msgs["/lidar/points"]):
        assert stamp_ns(msg.header) == t and msg.header.frame_id == "lidar" and msg.width == ref.width > 1000
        assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
            (f.name, f.offset, f.datatype, f.count) for f in ref.fields]
        assert (msg.point_step, msg.row_step, msg.is_dense) == (ref.point_step, ref.row_step, ref.is_dense)
        assert bytes(msg.data) == bytes(ref.data)
    assert listener.msgs["/camera/camera_info"][0].k[0] == pytest.approx(expected["/camera/camera_info"][0][1].k[0])

    # recorded timing scaled by --rate (absolute schedule: no drift), /clock in bag time, never backwards
    t_first = min(v[0][0] for v in expected.values())
    t_last = max(v[-1][0] for v in expected.values())
    span = (t_last - t_first) * 1e-9 / rate
    assert span * 0.95 <= stats["wall_s"] <= span + 2.0, stats
    clock = [stamp_ns(type("H", (), {"stamp": m.clock})) for m in listener.msgs["/clock"]]
    assert len(clock) >= 10
    assert all(b >= a for a, b in zip(clock, clock[1:]))
    assert t_first <= clock[0] and clock[-1] <= t_last + 50_000_000


def test_player_stops_cleanly_on_sigint(scene, tmp_path):
    env = ros_env(tmp_path)
    stats_path = tmp_path / "stats.json"
    proc = subprocess.Popen([PY, "-m", "nerf_mapping.ros.bag_player", str(scene), "--loop", "--rate", "1",
                             "--stats-json", str(stats_path)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        # wait for the start banner, then interrupt mid-playback
        deadline = time.monotonic() + 20
        line = ""
        while time.monotonic() < deadline and "messages on" not in line:
            line = proc.stdout.readline()
        time.sleep(0.7)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    stats = json.loads(stats_path.read_text())
    assert stats["interrupted"] and 0 < stats["published"]
    assert "stopped" in out


def test_player_rejects_missing_bag(tmp_path):
    from nerf_mapping.cli import main

    assert main(["bag", "play", str(tmp_path / "nope")]) == 2


def test_bag_info_cli(scene):
    from nerf_mapping.cli import main

    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["bag", "info", str(scene), "--json"]) == 0
    info = json.loads(buf.getvalue().split("\ndone in")[0])
    assert info["topics"]["/camera/image_raw"]["count"] == 12
    assert info["topics"]["/tf_static"]["qos"][0]["durability"] == "TRANSIENT_LOCAL"


_READ_WITHOUT_ROS = """
import importlib.abc, json, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in ("rclpy", "rosidl_runtime_py", "rosbag2_py", "builtin_interfaces") or top.endswith("_msgs") \\
                or name == "nerf_mapping.ros" or name.startswith("nerf_mapping.ros."):
            raise ImportError("blocked: " + name)

sys.meta_path.insert(0, Block())
import numpy as np
from nerf_mapping import bags
light = "torch" not in sys.modules
out = {"light": light, "counts": {}, "stamps_match": True}
with bags.open_reader(sys.argv[1] + "/metadata.yaml") as reader:
    for conn, t, raw in reader.messages():
        m = reader.deserialize(raw, conn.msgtype)
        out["counts"][conn.topic] = out["counts"].get(conn.topic, 0) + 1
        if conn.topic == "/camera/image_raw":
            out["image"] = list(bags.image_msg_to_array(m).shape)
            out["stamps_match"] &= bags.stamp_to_ns(m.header.stamp) == t
        elif conn.topic == "/camera/labels":
            out["labels"] = list(bags.label_msg_to_array(m).shape)
        elif conn.topic == "/camera/camera_info":
            out["intrinsics"] = bags.camera_info_to_intrinsics(m)
        elif conn.topic == "/odom":
            T = bags.odometry_to_matrix(m)
            out["odom_rigid"] = bool(np.allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-6))
        elif conn.topic == "/tf_static":
            out["tf_static"] = [bags.transform_msg_to_matrix(tr.transform).tolist() for tr in m.transforms]
print(json.dumps(out))
"""


def test_bags_reads_a_bag_and_its_messages_without_ros(scene, tmp_path):
    """The core's bag reader (the benchmarks') opens a bag and converts its ``rosbags`` messages with ROS and
    ``nerf_mapping.ros`` unimportable; importing it stays torch-free (``bag play`` starts fast)."""
    r = subprocess.run([PY, "-c", _READ_WITHOUT_ROS, str(scene)], env=ros_env(tmp_path), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["light"]
    assert out["counts"]["/camera/image_raw"] == 12 and out["stamps_match"]
    assert out["image"] == [60, 80, 3] and out["labels"] == [60, 80]
    assert (out["intrinsics"]["width"], out["intrinsics"]["height"], out["intrinsics"]["model"]) == (80, 60, "PINHOLE")
    assert out["odom_rigid"] and len(out["tf_static"]) == 2  # base_link -> camera_optical, base_link -> lidar
    assert np.allclose(np.asarray(out["tf_static"][1])[:3, 3], [0.0, 0.0, 0.15])


def test_benchmark_online_feeds_label_images_with_semantics(scene):
    """``benchmark online --semantics labels`` runs the demo's feature set: the bag's label images reach the mapper's
    semantics as the node's label topic does; without it they are not read."""
    from types import SimpleNamespace

    from nerf_mapping.benchmarks.online import BagFeed

    got = []
    intake = SimpleNamespace(submit_image=lambda *a: None, set_intrinsics=lambda *a: None,
                             add_odometry=lambda *a: None, add_static_transform=lambda *a: None)
    mapper = SimpleNamespace(intake=intake, semantics=SimpleNamespace(add_labels=lambda t, a: got.append((t, a))))
    for labels in (False, True):
        got.clear()
        feed = BagFeed(scene, holdout_every=4, labels=labels)
        for topic, msgtype, _, msg in feed.messages():
            feed.dispatch(mapper, topic, msgtype, msg)
        assert len(got) == (12 if labels else 0)
    assert len(feed.held_out) == 3  # every 4th image, as without semantics
    assert all(a.shape == (60, 80) and a.dtype == np.uint8 for _, a in got)


# --------------------------------------------------------------------------------------------------- msg_bridge
def _sample_messages():
    from builtin_interfaces.msg import Time
    from geometry_msgs.msg import TransformStamped
    from nav_msgs.msg import Odometry
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import Header
    from tf2_msgs.msg import TFMessage

    h = Header(stamp=Time(sec=12, nanosec=345), frame_id="camera_optical")
    img = Image(header=h, height=48, width=64, encoding="rgb8", is_bigendian=0, step=64 * 3)
    img.data = np.random.default_rng(0).integers(0, 256, 48 * 64 * 3, dtype=np.uint8).tobytes()
    info = CameraInfo(header=h, height=48, width=64, distortion_model="plumb_bob")
    info.d = [0.1, -0.02, 0.001, 0.002, 0.0]
    info.k = np.array([50.0, 0, 32, 0, 50.0, 24, 0, 0, 1])
    info.p = np.array([50.0, 0, 32, 0, 0, 50.0, 24, 0, 0, 0, 1, 0])
    odom = Odometry(header=Header(stamp=Time(sec=1, nanosec=2), frame_id="odom"), child_frame_id="base_link")
    odom.pose.pose.position.x, odom.pose.pose.orientation.w = 1.5, 1.0
    odom.pose.covariance = np.arange(36, dtype=np.float64)
    odom.twist.twist.angular.z = -0.25
    tf = TFMessage(transforms=[TransformStamped(header=h, child_frame_id=f"f{i}") for i in range(3)])
    tf.transforms[1].transform.translation.y = 2.0
    return [img, info, odom, tf]


def test_msg_bridge_round_trip():
    from rclpy.serialization import deserialize_message, serialize_message

    from nerf_mapping.ros import msg_bridge as mb

    ts = mb.default_typestore()
    for msg in _sample_messages():
        msgtype = mb.msgtype_of(msg)
        assert mb.definitions_match(ts, msgtype), msgtype
        obj = mb.from_rclpy(msg, ts)
        # wire-compatible both ways (bytes may differ only in CDR padding, which rclpy leaves uninitialised)
        raw = ts.serialize_cdr(obj, msgtype)
        assert len(raw) == len(serialize_message(msg)), msgtype
        assert deserialize_message(bytes(raw), type(msg)) == msg, msgtype
        assert mb.to_rclpy(ts.deserialize_cdr(serialize_message(msg), msgtype)) == msg, msgtype
        assert mb.to_rclpy(obj) == msg, msgtype


def test_msg_bridge_detects_definition_mismatch():
    from rosbags.typesys import Stores, get_typestore, get_types_from_msg

    from nerf_mapping.ros import msg_bridge as mb

    ts = get_typestore(Stores.EMPTY)
    ts.register(get_types_from_msg("int32 data\nstring extra", "std_msgs/msg/Int32"))
    assert not mb.definitions_match(ts, "std_msgs/msg/Int32")
    ts2 = get_typestore(Stores.EMPTY)
    ts2.register(get_types_from_msg("int32 data", "std_msgs/msg/Int32"))
    assert mb.definitions_match(ts2, "std_msgs/msg/Int32")
    with pytest.raises(ImportError):
        mb.msg_class("no_such_pkg_xyz/msg/Foo")


def test_msg_bridge_image_is_fast():
    from nerf_mapping.ros import msg_bridge as mb

    ts = mb.default_typestore()
    T = ts.types
    img = T["sensor_msgs/msg/Image"](
        header=T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=1, nanosec=2), frame_id="c"),
        height=480, width=640, encoding="rgb8", is_bigendian=0, step=1920,
        data=np.zeros(640 * 480 * 3, np.uint8))
    mb.to_rclpy(img)
    t0 = time.perf_counter()
    for _ in range(20):
        m = mb.to_rclpy(img)
    per = (time.perf_counter() - t0) / 20
    assert len(m.data) == 640 * 480 * 3
    assert per < 0.02, f"{per * 1e3:.1f} ms per 640x480 image"  # ~0.3 ms measured; generous for loaded CI


# ------------------------------------------------------------------------------------------------------ convert
def _check_converted(bag: Path, data, expect_model: str):
    from nerf_mapping.geometry import opencv_to_opengl
    from nerf_mapping.geometry.rigid import make_pose, matrix_from_quat_xyzw
    from nerf_mapping.scene.trajectory import base_to_camera_optical

    msgs = read_bag(bag)
    n = len(data)
    assert len(msgs["/camera/image_raw"]) == n and len(msgs["/camera/camera_info"]) == n
    assert len(msgs["/tf_static"]) == 1
    assert len(msgs["/odom"]) == len(msgs["/ground_truth/odometry"]) >= 5 * (n - 1)
    for i, ((_, img), (_, info)) in enumerate(zip(msgs["/camera/image_raw"], msgs["/camera/camera_info"])):
        assert stamp_ns(img.header) == stamp_ns(info.header)
        assert (img.width, img.height) == (int(data.cameras.width[i]), int(data.cameras.height[i]))
        assert np.array_equal(np.asarray(img.data).reshape(img.height, img.width, 3), data.images[i].numpy())
        assert info.distortion_model == expect_model
        assert info.k[0] == pytest.approx(float(data.cameras.fx[i]), rel=1e-6)
        assert info.k[5] == pytest.approx(float(data.cameras.cy[i]), rel=1e-6)
    # ground truth before the first image = the first camera pose composed with the (demo) extrinsic
    gt0 = msgs["/ground_truth/odometry"][0][1].pose.pose
    q = gt0.orientation
    t_odom_base = make_pose(matrix_from_quat_xyzw(np.array([q.x, q.y, q.z, q.w])),
                            np.array([gt0.position.x, gt0.position.y, gt0.position.z]))
    cam0 = np.eye(4)
    cam0[:3, :4] = opencv_to_opengl(np.asarray(data.cameras.c2w[0], np.float64))
    assert np.allclose(t_odom_base @ base_to_camera_optical(), cam0, atol=1e-5)
    return msgs


def test_convert_lego_crop(shared_data, tmp_path):
    from nerf_mapping.data import load_dataset
    from nerf_mapping.ros.bag_convert import convert_dataset_to_bag

    src = shared_data / "nerf_synthetic_lego"
    if not src.is_dir():
        pytest.skip(f"{src} missing")
    data = load_dataset(src, split="all", max_frames=5)
    res = convert_dataset_to_bag(src, tmp_path / "lego_bag", dataset=data)
    assert res["counts"]["/camera/image_raw"] == 5
    msgs = _check_converted(tmp_path / "lego_bag", data, "plumb_bob")
    assert np.allclose(msgs["/camera/camera_info"][0][1].d, 0.0)


def test_convert_cli_fox_distortion(shared_data, tmp_path):
    from nerf_mapping.cli import main
    from nerf_mapping.data import load_dataset

    src = shared_data / "instant_ngp_fox"
    if not src.is_dir():
        pytest.skip(f"{src} missing")
    out = tmp_path / "fox_bag"
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main(["bag", "convert", "--data", str(src), "--output", str(out), "--max-frames", "3",
                   "--downscale", "8", "--odom-noise", "0", "--storage", "sqlite3"])
    assert rc == 0, buf.getvalue()
    data = load_dataset(src, split="all", max_frames=3, downscale=8)
    msgs = _check_converted(out, data, "plumb_bob")
    k1, k2, k3, _k4, p1, p2 = data.cameras.distortion[0].tolist()
    assert np.allclose(msgs["/camera/camera_info"][0][1].d, [k1, k2, p1, p2, k3], atol=1e-7)
    # --odom-noise 0: odometry == ground truth
    a = msgs["/odom"][-1][1].pose.pose.position
    b = msgs["/ground_truth/odometry"][-1][1].pose.pose.position
    assert (a.x, a.y, a.z) == pytest.approx((b.x, b.y, b.z), abs=1e-9)
    # refuses to overwrite
    with redirect_stdout(io.StringIO()):
        assert main(["bag", "convert", "--data", str(src), "--output", str(out), "--max-frames", "2"]) == 2


def test_convert_writes_depth_and_dataset_timestamps(scene, tmp_path):
    """A dataset with depth maps gets the depth topic (16UC1 mm = depth / world_scale * 1000, 0 invalid); capture
    times in its metadata replace the fixed image rate."""
    from nerf_mapping.data import load_dataset
    from nerf_mapping.ros.bag_convert import convert_dataset_to_bag

    data = load_dataset(scene.parent, split="all", max_frames=4)  # the demo scene: ground-truth depth PNGs
    assert data.depths is not None and data.world_scale == 1.0
    data.depths[1][:2, :3] = 0.0  # invalid pixels stay 0
    res = convert_dataset_to_bag(scene.parent, tmp_path / "plain", dataset=data)
    assert res["depth"] and res["counts"]["/camera/depth/image_raw"] == 4 and res["timing"].startswith("fixed")
    msgs = _check_converted(tmp_path / "plain", data, "plumb_bob")
    for (t, img), (ti, _), d in zip(msgs["/camera/depth/image_raw"], msgs["/camera/image_raw"], data.depths):
        assert t == ti and (img.encoding, img.step, img.is_bigendian) == ("16UC1", 2 * img.width, 0)
        assert img.header.frame_id == "camera_optical"
        mm = np.frombuffer(bytes(img.data), "<u2").reshape(img.height, img.width)
        assert np.array_equal(mm, np.round(d.numpy().astype(np.float64) * 1000).astype(np.uint16))
    assert not np.frombuffer(bytes(msgs["/camera/depth/image_raw"][1][1].data), "<u2").reshape(
        mm.shape)[:2, :3].any()
    img_ns = [t for t, _ in msgs["/camera/image_raw"]]
    assert np.allclose(np.diff(img_ns), 1e8, atol=1)

    # scaled scene units: millimetres are in file units; recorded capture times (7-Scenes: frame_index / 30 s)
    data.depths = [d * 2.0 for d in data.depths]
    data.world_scale = 2.0
    data.metadata["timestamps_s"] = [i / 30.0 for i in data.frame_indices]
    res = convert_dataset_to_bag(scene.parent, tmp_path / "timed", dataset=data, start_time_s=1000.0)
    assert res["timing"].startswith("dataset timestamps")
    msgs2 = read_bag(tmp_path / "timed")
    stamps = np.array([t for t, _ in msgs2["/camera/image_raw"]])
    expected = 1000 * 10**9 + np.round((np.array(data.frame_indices) - data.frame_indices[0]) / 30.0 * 1e9)
    assert np.array_equal(stamps, expected.astype(np.int64))
    assert [t for t, _ in msgs2["/camera/depth/image_raw"]] == stamps.tolist()
    for (_, a), (_, b) in zip(msgs["/camera/depth/image_raw"], msgs2["/camera/depth/image_raw"]):
        assert bytes(a.data) == bytes(b.data)
    odom = np.array([t for t, _ in msgs2["/odom"]])
    assert odom[0] < stamps[0] and odom[-1] > stamps[-1]
    data.metadata["timestamps_s"] = [0.0, 1.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="increasing"):
        convert_dataset_to_bag(scene.parent, tmp_path / "bad", dataset=data)


# ------------------------------------------------------------------------------------------------------ demo
def test_demo_inputs_switch_sets_node_parameters(scene, tmp_path):
    """``demo --inputs``: the CLI offers exactly the demo's input sets, and each becomes the node's depth_topic /
    points_topic parameters (empty = off) in the parameter file the demo launches with."""
    import yaml

    from nerf_mapping.cli.main import build_parser
    from nerf_mapping.ros.demo import DEFAULT_INPUTS, DEMO_INPUTS, _write_params, describe_inputs
    from nerf_mapping.scene.bag import TOPIC_DEPTH, TOPIC_POINTS

    assert list(DEMO_INPUTS) == ["rgb", "rgbd", "rgb+lidar"] and DEFAULT_INPUTS == "rgbd"
    parser = build_parser()
    assert parser.parse_args(["demo"]).inputs == DEFAULT_INPUTS
    assert parser.parse_args(["demo", "--inputs", "rgb+lidar"]).inputs == "rgb+lidar"
    with pytest.raises(SystemExit), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        parser.parse_args(["demo", "--inputs", "lidar"])
    expected = {"rgb": ("", ""), "rgbd": (TOPIC_DEPTH, ""), "rgb+lidar": ("", TOPIC_POINTS)}
    for name, (depth, points) in expected.items():
        out = tmp_path / name.replace("+", "_")
        out.mkdir()
        p = yaml.safe_load(_write_params(out, scene.parent, name).read_text())["nerf_mapper"]["ros__parameters"]
        assert (p["depth_topic"], p["points_topic"]) == (depth, points)
        assert p["semantics"]["teacher"] == "labels"
    msgs = read_bag(scene)
    assert TOPIC_DEPTH in msgs and TOPIC_POINTS in msgs  # the demo bag carries both inputs
    assert describe_inputs("rgb+lidar") == "rgb+lidar (/camera/image_raw, /lidar/points)"
    # --set: node parameters over the demo's, dotted names, YAML values; a malformed one is refused by name
    assert parser.parse_args(["demo", "--set", "a.b=1"]).set == ["a.b=1"]
    out = tmp_path / "sets"
    out.mkdir()
    p = yaml.safe_load(_write_params(out, scene.parent, "rgbd", 0, [
        "keyframe.revisit_threshold=0.04", "render_budget_s=2", "semantics.teacher="]).read_text())[
        "nerf_mapper"]["ros__parameters"]
    assert p["keyframe"]["revisit_threshold"] == 0.04 and p["render_budget_s"] == 2
    assert p["semantics"]["teacher"] == "" and p["semantics"]["class_names"]  # the rest of the group is kept
    for bad in ("revisit_threshold", "=3", "a..b=1", "output_dir.x=1"):
        with pytest.raises(ValueError, match="--set"):
            _write_params(out, scene.parent, "rgbd", 0, [bad])


def test_demo_scores_exported_mesh_like_benchmark_mesh(scene, tmp_path):
    """The demo's ExportMesh score is benchmark mesh's recipe: the ground-truth mesh scores perfectly, a shifted copy
    loses F-score and gains Chamfer distance in proportion to the shift."""
    import open3d as o3d

    from nerf_mapping.ros.demo import score_export_mesh
    from nerf_mapping.scene import read_labeled_ply

    gt = read_labeled_ply(scene.parent / "mesh.ply")
    for shift, name in ((0.0, "same.ply"), (0.3, "shifted.ply")):
        m = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(gt["vertices"] + [shift, 0.0, 0.0]),
                                      o3d.utility.Vector3iVector(gt["triangles"]))
        o3d.io.write_triangle_mesh(str(tmp_path / name), m)
    same = score_export_mesh(scene.parent, tmp_path / "same.ply", samples=20_000)
    assert same["chamfer_rel"] < 1e-6 and same["fscore_2pct"] == 1.0 and same["views"] == 12
    assert 0.3 < same["gt_visible_fraction"] < 1.0  # the truth is restricted to what the views saw
    shifted = score_export_mesh(scene.parent, tmp_path / "shifted.ply", samples=20_000)
    assert shifted["fscore_2pct"] < 0.9 and shifted["chamfer_rel"] > 0.005  # 0.68 and 0.013 measured
    assert set(same) >= {"chamfer_rel", "fscore_2pct", "fscore_1pct", "precision_2pct", "recall_2pct", "path"}


# ------------------------------------------------------------------------------------------------------ bring-up
STUB_NODE = '''
import json, os, sys, rclpy
from rclpy.executors import ExternalShutdownException
from sensor_msgs.msg import Image

def main():
    rclpy.init(args=sys.argv)
    node = rclpy.create_node("nerf_mapper")
    node.declare_parameter("marker", "unset")
    got = []
    node.create_subscription(Image, "/camera/image_raw", lambda m: got.append(m.header.stamp.nanosec), 50)
    print("stub node up", flush=True)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    with open(os.environ["STUB_OUT"], "w") as f:
        json.dump({"images": len(got), "marker": node.get_parameter("marker").value,
                   "use_sim_time": node.get_parameter("use_sim_time").value,
                   "profile": os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE")}, f)
    rclpy.try_shutdown()

if __name__ == "__main__":
    main()
'''


def _bringup_env(tmp_path: Path, body: str = STUB_NODE) -> dict[str, str]:
    (tmp_path / "stub_mods").mkdir(exist_ok=True)
    (tmp_path / "stub_mods" / "stub_mapper.py").write_text(body)
    (tmp_path / "params.yaml").write_text("nerf_mapper:\n  ros__parameters:\n    marker: from_yaml\n")
    env = ros_env(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "stub_mods"), env["PYTHONPATH"]])
    env["STUB_OUT"] = str(tmp_path / "stub.json")
    return env


def _launch_cmd(tmp_path: Path, bag: Path, *extra: str) -> list[str]:
    return [PY, "-c", "import sys; from nerf_mapping.cli import main; sys.exit(main(sys.argv[1:]))", "launch",
            "--bag", str(bag), "--params", str(tmp_path / "params.yaml"), "--node-module", "stub_mapper",
            "--log-dir", str(tmp_path / "logs"), *extra]


def test_launch_runs_node_and_player_with_same_params(scene, tmp_path):
    env = _bringup_env(tmp_path)
    proc = subprocess.run(_launch_cmd(tmp_path, scene, "--exit-after-bag", "--use-sim-time", "--rate", "4"),
                          env=env, capture_output=True, text=True, timeout=50)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads((tmp_path / "stub.json").read_text())
    assert res["images"] == 12
    assert res["marker"] == "from_yaml" and res["use_sim_time"] is True
    assert res["profile"] and Path(res["profile"]).name == "fastdds.xml" and Path(res["profile"]).is_file()
    assert (tmp_path / "logs" / "mapper.log").is_file() and (tmp_path / "logs" / "player.log").is_file()
    assert "--clock" in (tmp_path / "logs" / "player.log").read_text().splitlines()[0]


def test_launch_ctrl_c_stops_all_children(scene, tmp_path):
    env = _bringup_env(tmp_path)
    proc = subprocess.Popen(_launch_cmd(tmp_path, scene, "--loop"), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    pids = []
    try:
        deadline = time.monotonic() + 30
        seen_node = False
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if "started" in line and "(pid " in line:
                pids.append(int(line.split("(pid ")[1].split(")")[0]))
            if "stub node up" in line:
                seen_node = True
            if seen_node and "messages on" in line:
                break
        assert seen_node and len(pids) == 2
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=25)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    for pid in pids:  # children are gone (reaped by the bring-up)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert json.loads((tmp_path / "stub.json").read_text())["images"] > 0


def test_launch_reports_crashed_node(scene, tmp_path):
    env = _bringup_env(tmp_path, "import sys\nprint('boom', flush=True)\nsys.exit(3)\n")
    proc = subprocess.run(_launch_cmd(tmp_path, scene), env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert "mapper exited with code 3" in proc.stdout + proc.stderr


def test_share_dir_has_package_files():
    from nerf_mapping.ros.bringup import fastdds_profile, rviz_config, share_dir

    assert (share_dir() / "launch" / "mapping.launch.py").is_file()
    assert fastdds_profile().is_file() and rviz_config().is_file()
