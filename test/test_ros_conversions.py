"""ROS message conversions (no DDS: message objects only)."""
from __future__ import annotations

import io

import numpy as np
import pytest

pytest.importorskip("rclpy")
from geometry_msgs.msg import Pose, Transform  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField  # noqa: E402

from nerf_mapping import bags  # noqa: E402
from nerf_mapping.ros import conversions as conv  # noqa: E402
from nerf_mapping.export.paths import safe_output_path  # noqa: E402
from nerf_mapping.geometry import model_c2w_to_optical_pose, optical_pose_to_model_c2w  # noqa: E402


def img_msg(arr: np.ndarray, encoding: str, pad: int = 0) -> Image:
    h, w = arr.shape[:2]
    c = 1 if arr.ndim == 2 else arr.shape[2]
    rows = np.zeros((h, w * c + pad), np.uint8)
    rows[:, : w * c] = arr.reshape(h, -1)
    return Image(height=h, width=w, encoding=encoding, step=w * c + pad, data=rows.tobytes())


RGB = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)


@pytest.mark.parametrize("enc", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"])
def test_image_encodings(enc):
    if enc == "rgb8":
        src, want = RGB, RGB
    elif enc == "bgr8":
        src, want = RGB[:, :, ::-1], RGB
    elif enc == "rgba8":
        src, want = np.concatenate([RGB, np.full((5, 7, 1), 9, np.uint8)], 2), RGB
    elif enc == "bgra8":
        src, want = np.concatenate([RGB[:, :, ::-1], np.full((5, 7, 1), 9, np.uint8)], 2), RGB
    else:
        src, want = RGB[:, :, 0], np.repeat(RGB[:, :, :1], 3, 2)
    out = bags.image_msg_to_array(img_msg(src, enc, pad=3))
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    assert np.array_equal(out, want)


def test_image_validation():
    with pytest.raises(ValueError, match="encoding"):
        bags.image_msg_to_array(img_msg(RGB, "yuv422"))
    m = img_msg(RGB, "rgb8")
    m.step = 20  # < 7 * 3
    with pytest.raises(ValueError, match="step"):
        bags.image_msg_to_array(m)
    m = img_msg(RGB, "rgb8")
    m.data = bytes(len(m.data) - 1)
    with pytest.raises(ValueError, match="data size"):
        bags.image_msg_to_array(m)
    m = img_msg(RGB, "rgb8")
    m.width = 0
    with pytest.raises(ValueError, match="size"):
        bags.image_msg_to_array(m)


def test_image_roundtrip_and_depth():
    m = conv.array_to_image_msg(RGB, 1_500_000_000_123, "cam", "rgb8")
    assert m.header.stamp.sec == 1500 and m.header.stamp.nanosec == 123 and m.header.frame_id == "cam"
    assert bags.stamp_to_ns(m.header.stamp) == 1_500_000_000_123
    assert np.array_equal(bags.image_msg_to_array(m), RGB)
    m = conv.array_to_image_msg(RGB, 0, "cam", "bgr8")
    assert np.array_equal(bags.image_msg_to_array(m), RGB)
    d = np.linspace(0, 3, 35, dtype=np.float32).reshape(5, 7)
    dm = conv.depth_array_to_image_msg(d, 0, "cam")
    assert dm.encoding == "32FC1" and dm.step == 28
    assert np.array_equal(np.frombuffer(bytes(dm.data), "<f4").reshape(5, 7), d)


def test_compressed():
    from PIL import Image as PILImage

    buf = io.BytesIO()
    PILImage.fromarray(RGB).save(buf, format="PNG")
    m = CompressedImage(format="png", data=buf.getvalue())
    assert np.array_equal(bags.compressed_image_to_array(m), RGB)
    with pytest.raises(ValueError):
        bags.compressed_image_to_array(CompressedImage(format="png", data=b"not a png"))
    with pytest.raises(ValueError):
        bags.compressed_image_to_array(CompressedImage(format="tiff", data=buf.getvalue()))


def camera_info(model="plumb_bob", d=(0.1, -0.05, 0.001, 0.002, 0.01)) -> CameraInfo:
    ci = CameraInfo(width=640, height=480, distortion_model=model)
    ci.k = [500.0, 0.0, 320.0, 0.0, 510.0, 240.0, 0.0, 0.0, 1.0]
    ci.d = list(d)
    return ci


def test_camera_info():
    it = bags.camera_info_to_intrinsics(camera_info())
    assert it["model"] == "OPENCV" and (it["width"], it["height"]) == (640, 480)
    assert (it["fx"], it["fy"], it["cx"], it["cy"]) == (500.0, 510.0, 320.0, 240.0)
    assert it["distortion"] == pytest.approx([0.1, -0.05, 0.01, 0.0, 0.001, 0.002])  # k1 k2 k3 k4 p1 p2
    assert bags.camera_info_to_intrinsics(camera_info(d=(0, 0, 0, 0, 0)))["model"] == "PINHOLE"
    fe = bags.camera_info_to_intrinsics(camera_info("equidistant", (0.1, 0.01, 0.001, 0.0001)))
    assert fe["model"] == "OPENCV_FISHEYE" and fe["distortion"] == pytest.approx([0.1, 0.01, 0.001, 0.0001, 0, 0])
    rp = bags.camera_info_to_intrinsics(camera_info("rational_polynomial", (0.1, 0, 0, 0, 0, 0, 0, 0)))
    assert rp["model"] == "OPENCV"
    with pytest.raises(ValueError):
        bags.camera_info_to_intrinsics(camera_info("rational_polynomial", (0.1, 0, 0, 0, 0, 0.2, 0, 0)))
    with pytest.raises(ValueError):
        bags.camera_info_to_intrinsics(camera_info("weird"))
    bad = camera_info()
    bad.k = [0.0] * 9
    with pytest.raises(ValueError):
        bags.camera_info_to_intrinsics(bad)
    binned = camera_info()
    binned.binning_x = binned.binning_y = 2
    b = bags.camera_info_to_intrinsics(binned)
    assert (b["width"], b["fx"], b["cx"]) == (320, 250.0, 160.0)


def test_pose_roundtrip_and_validation():
    rng = np.random.default_rng(1)
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    p = Pose()
    p.position.x, p.position.y, p.position.z = 1.0, -2.0, 0.5
    p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w = q
    T = bags.pose_msg_to_matrix(p)
    assert np.allclose(T[:3, :3].T @ T[:3, :3], np.eye(3)) and np.linalg.det(T[:3, :3]) == pytest.approx(1)
    assert np.allclose(bags.pose_msg_to_matrix(conv.matrix_to_pose_msg(T)), T)
    tf = conv.matrix_to_transform_msg(T)
    assert isinstance(tf, Transform) and np.allclose(bags.transform_msg_to_matrix(tf), T)
    bad = Pose()
    bad.orientation.w = float("nan")
    with pytest.raises(ValueError, match="finite"):
        bags.pose_msg_to_matrix(bad)
    bad = Pose()
    bad.orientation.w = 2.0
    with pytest.raises(ValueError, match="unit"):
        bags.pose_msg_to_matrix(bad)
    bad = Pose()
    bad.orientation.w = 1.0
    bad.position.x = float("inf")
    with pytest.raises(ValueError, match="finite"):
        bags.pose_msg_to_matrix(bad)


def test_optical_to_model_convention():
    # camera optical frame looking along world +x (z fwd), x right = world -y, y down = world -z
    T = np.eye(4)
    T[:3, :3] = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], dtype=float)
    T[:3, 3] = [1, 2, 3]
    c2w = optical_pose_to_model_c2w(T)
    assert c2w.shape == (3, 4) and c2w.dtype == np.float32
    # OpenGL camera looks along -Z: the viewing direction must be world +x, up (+Y) must be world +z
    assert np.allclose(-c2w[:, 2], [1, 0, 0]) and np.allclose(c2w[:, 1], [0, 0, 1])
    assert np.allclose(c2w[:, 3], [1, 2, 3])
    assert np.allclose(model_c2w_to_optical_pose(c2w), T, atol=1e-6)


def test_path_cloud_marker():
    P = conv.path_msg([np.eye(4), np.eye(4)], [10, 20], "map")
    assert P.header.frame_id == "map" and len(P.poses) == 2 and P.poses[1].header.stamp.nanosec == 20
    # a long path: poses and quaternions exact, the newest half kept, the older ones thinned evenly
    from nerf_mapping.geometry.rigid import matrix_from_quat_xyzw

    rng = np.random.default_rng(0)
    poses = []
    for i in range(50):
        T = np.eye(4)
        q = rng.normal(size=4)
        T[:3, :3], T[:3, 3] = matrix_from_quat_xyzw(q / np.linalg.norm(q)), [i, 2.0 * i, 0.5]
        poses.append(T)
    P = conv.path_msg(poses, range(1, 51), "odom", max_poses=20)
    got = [p.header.stamp.nanosec for p in P.poses]
    assert len(got) == 20 and got[0] == 1 and got[-10:] == list(range(41, 51)) and got == sorted(got)
    for p in P.poses:
        T = poses[p.header.stamp.nanosec - 1]
        o = p.pose.orientation
        assert np.allclose(bags.pose_msg_to_matrix(p.pose), T, atol=1e-9) and o.w >= 0
    assert len(conv.path_msg(poses, range(1, 51), "odom").poses) == 50 and conv.path_msg([], [], "map").poses == []
    pts = np.array([[0, 0, 0], [1, 2, 3]], np.float32)
    cloud = conv.pointcloud2_xyzrgb(pts, np.array([[255, 0, 0], [0, 0, 255]], np.uint8), {"relevancy": [0.1, 0.9]})
    assert [f.name for f in cloud.fields] == ["x", "y", "z", "rgb", "relevancy"] and cloud.width == 2
    rec = np.frombuffer(bytes(cloud.data), np.float32).reshape(2, 5)
    assert np.allclose(rec[1, :3], [1, 2, 3]) and rec[1, 4] == pytest.approx(0.9)
    assert rec[:, 3].view(np.uint32).tolist() == [0xFF0000, 0x0000FF]
    m = conv.marker_triangle_list(pts.tolist() + [[0, 1, 0]], [[0, 1, 2]], np.full((3, 3), 128, np.uint8))
    assert len(m.points) == 3 and len(m.colors) == 3 and m.type == m.TRIANGLE_LIST
    with pytest.raises(ValueError):
        conv.marker_triangle_list(pts, [[0, 1, 5]])


def test_stamp_validation():
    from builtin_interfaces.msg import Time

    assert bags.stamp_to_ns(Time(sec=2, nanosec=5)) == 2_000_000_005
    assert conv.ns_to_stamp(2_000_000_005) == Time(sec=2, nanosec=5)


def test_node_reads_through_the_ros_free_readers():
    """One definition per reader: the node's ``conversions`` re-exports :mod:`nerf_mapping.bags`'s."""
    for name in ("stamp_to_ns", "image_msg_to_array", "label_msg_to_array", "compressed_image_to_array",
                 "camera_info_to_intrinsics", "pose_msg_to_matrix", "transform_msg_to_matrix", "odometry_to_matrix",
                 "pose_stamped_to_matrix", "depth_msg_to_array", "pointcloud_msg_to_arrays", "pointcloud2_fields"):
        assert getattr(conv, name) is getattr(bags, name), name


def test_safe_output_path(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    assert safe_output_path(root, "a/map", "x", ".pt") == (root / "a" / "map.pt").resolve()
    assert safe_output_path(root, "", "default", ".pt").name == "default.pt"
    assert safe_output_path(root, "m.pt", "x", ".pt").name == "m.pt"
    for evil in ("../evil", "/etc/passwd", "a/../../evil", "~/x", "a\\..\\b", "a\x00b"):
        with pytest.raises(ValueError):
            safe_output_path(root, evil, "x", ".pt")
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(ValueError):
        safe_output_path(root, "link/evil", "x", ".pt")


def test_label_images():
    lab = (np.arange(12, dtype=np.uint8) % 7).reshape(3, 4)
    m = Image(height=3, width=4, encoding="mono8", step=6, data=np.pad(lab, ((0, 0), (0, 2))).tobytes())
    assert np.array_equal(bags.label_msg_to_array(m), lab)
    m16 = Image(height=3, width=4, encoding="16UC1", step=8, is_bigendian=1, data=lab.astype(">u2").tobytes())
    assert np.array_equal(bags.label_msg_to_array(m16), lab)
    for bad in (Image(height=3, width=4, encoding="rgb8", step=12, data=bytes(36)),
                Image(height=3, width=4, encoding="mono8", step=4, data=bytes(11)),
                Image(height=0, width=4, encoding="mono8", step=4, data=b""),
                Image(height=1, width=2, encoding="mono16", step=4, data=np.array([1, 300], "<u2").tobytes())):
        with pytest.raises(ValueError):
            bags.label_msg_to_array(bad)


# ---------------------------------------------------------------------------------------------------------- depth
def depth_msg(values: np.ndarray, encoding: str, big: bool = False, pad: int = 0) -> Image:
    """A hand-packed depth image: ``values`` already in the encoding's units, rows padded by ``pad`` bytes."""
    code = {"16UC1": "u2", "mono16": "u2", "32FC1": "f4"}[encoding]
    a = np.asarray(values).astype((">" if big else "<") + code)
    h, w = a.shape
    rows = np.zeros((h, w * a.itemsize + pad), np.uint8)
    rows[:, : w * a.itemsize] = a.view(np.uint8).reshape(h, -1)
    return Image(height=h, width=w, encoding=encoding, is_bigendian=int(big), step=rows.shape[1], data=rows.tobytes())


@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize("enc", ["16UC1", "mono16", "32FC1"])
def test_depth_encodings(enc, pad, big):
    if enc == "32FC1":
        raw = np.array([[1.5, 0.0, np.nan, 2.25], [np.inf, -np.inf, -1.0, 65.5]], np.float32)
        want = np.array([[1.5, 0, 0, 2.25], [0, 0, 0, 65.5]], np.float32)
    else:  # millimetres
        raw = np.array([[1500, 0, 1, 2250], [65535, 7, 0, 999]], np.uint16)
        want = raw.astype(np.float32) / np.float32(1000)
    out = bags.depth_msg_to_array(depth_msg(raw, enc, big, pad))
    assert out.dtype == np.float32 and out.shape == (2, 4) and out.flags.c_contiguous
    assert np.array_equal(out, want) and not np.signbit(out).any()  # no -0.0 either


def test_depth_validation():
    good = np.ones((3, 4), np.uint16)
    with pytest.raises(ValueError, match="unsupported depth encoding 'rgb8'"):
        bags.depth_msg_to_array(img_msg(RGB, "rgb8"))
    m = depth_msg(good, "16UC1")
    m.step = 7  # < 4 * 2
    with pytest.raises(ValueError, match="step 7 < width"):
        bags.depth_msg_to_array(m)
    m = depth_msg(good, "16UC1", pad=2)
    m.data = bytes(m.data)[:-1]
    with pytest.raises(ValueError, match="data size 29 != step"):
        bags.depth_msg_to_array(m)
    m = depth_msg(good, "32FC1")
    m.height, m.width, m.step = 100_000, 100_000, 400_000
    with pytest.raises(ValueError, match="invalid image size"):
        bags.depth_msg_to_array(m)


def test_depth_builder_roundtrips():
    d = np.array([[0.5, 1.2344, np.nan, 3.0], [0.0, -2.0, np.inf, 70.0], [65.535, 0.0004, 10.0, 1e-3]])
    want16 = np.array([[0.5, 1.234, 0, 3.0], [0, 0, 0, 0], [65.535, 0, 10.0, 1e-3]], np.float32)
    for enc in ("16UC1", "mono16", "16uc1"):
        m = conv.depth_image_msg(d, 1_700_000_000_000_000_042, "cam_optical", encoding=enc)
        assert m.encoding == {"16uc1": "16UC1"}.get(enc, enc)  # the canonical name goes out
        assert m.step == 8 and m.header.frame_id == "cam_optical" and m.header.stamp.nanosec == 42
        assert np.allclose(conv.depth_msg_to_array(m), want16, rtol=0, atol=1e-6)
    m = conv.depth_image_msg(d, 0, "cam", encoding="32FC1")
    assert m.step == 16 and np.isnan(np.frombuffer(bytes(m.data), "<f4")[2])  # written as given
    want32 = np.where(np.isfinite(d) & (d > 0), d, 0).astype(np.float32)
    assert np.array_equal(conv.depth_msg_to_array(m), want32)
    assert np.array_equal(conv.depth_msg_to_array(conv.depth_array_to_image_msg(d, 0, "cam")), want32)
    with pytest.raises(ValueError, match="encoding"):
        conv.depth_image_msg(d, 0, "cam", encoding="8UC1")
    with pytest.raises(ValueError, match=r"\[H,W\]"):
        conv.depth_image_msg(d[0], 0, "cam")
    # a bag's message: the rosbags typestore's Image, serialised and read back (data is then a numpy view)
    ts = bags.default_typestore()
    T = ts.types
    msg = T["sensor_msgs/msg/Image"](header=T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](
        sec=5, nanosec=0), frame_id="cam"), height=3, width=4, encoding="16UC1", is_bigendian=1, step=10,
        data=np.pad((want16 * 1000).round().astype(">u2").view(np.uint8).reshape(3, 8), ((0, 0), (0, 2))).ravel())
    back = ts.deserialize_cdr(ts.serialize_cdr(msg, "sensor_msgs/msg/Image"), "sensor_msgs/msg/Image")
    assert isinstance(back.data, np.ndarray) and np.allclose(bags.depth_msg_to_array(back), want16, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------- clouds
DATATYPE = {"i1": 1, "u1": 2, "i2": 3, "u2": 4, "i4": 5, "u4": 6, "f4": 7, "f8": 8}


def cloud_msg(columns, height: int = 1, point_pad: int = 0, row_pad: int = 0, big: bool = False,
              stamp_ns: int = 0) -> PointCloud2:
    """A hand-packed rclpy PointCloud2: ``columns`` = [(name, numpy type code, values [N])] in memory order, with
    ``point_pad`` bytes after each point and ``row_pad`` after each row."""
    n = len(columns[0][2])
    order = ">" if big else "<"
    offsets = np.cumsum([0] + [np.dtype(c).itemsize for _, c, _ in columns])
    step = int(offsets[-1]) + point_pad
    dt = np.dtype({"names": [c[0] for c in columns], "formats": [order + c[1] for c in columns],
                   "offsets": [int(o) for o in offsets[:-1]], "itemsize": step})
    rec = np.zeros(n, dt)
    for name, _, vals in columns:
        rec[name] = vals
    w = n // height
    rows = np.zeros((height, w * step + row_pad), np.uint8)
    rows[:, : w * step] = rec.view(np.uint8).reshape(height, -1)
    fields = [PointField(name=name, offset=int(o), datatype=DATATYPE[c], count=1)
              for (name, c, _), o in zip(columns, offsets)]
    return PointCloud2(header=conv._header(stamp_ns, "lidar"), height=height, width=w, fields=fields,
                       is_bigendian=big, point_step=step, row_step=rows.shape[1], data=rows.tobytes())


PTS = np.random.default_rng(3).uniform(-20, 20, (24, 3)).astype(np.float32)
STAMP_NS = 1_700_000_123_250_000_000
"""A header stamp (2023) whose absolute times need float64 care: 1.7e9 s in float64 resolves 0.24 us."""


def test_cloud_builder_roundtrip():
    t = np.linspace(0, 0.1, 24)
    m = conv.pointcloud2_msg(PTS, t, STAMP_NS, "lidar")
    assert m.header.frame_id == "lidar" and [f.name for f in m.fields] == ["x", "y", "z", "time"] and m.is_dense
    xyz, times = conv.pointcloud_msg_to_arrays(m)
    assert xyz.dtype == np.float32 and xyz.shape == (24, 3) and np.array_equal(xyz, PTS)
    assert times.dtype == np.float64 and np.allclose(times, t, atol=1e-7)
    xyz, times = bags.pointcloud_msg_to_arrays(conv.pointcloud2_msg(PTS, None, STAMP_NS, "lidar"))
    assert times is None and np.array_equal(xyz, PTS)
    # the plain dict of pointcloud2_fields reads the same without any message type
    from types import SimpleNamespace

    xyz, times = bags.pointcloud_msg_to_arrays(SimpleNamespace(**bags.pointcloud2_fields(PTS, t)))
    assert np.array_equal(xyz, PTS) and np.allclose(times, t, atol=1e-7)
    empty, times = bags.pointcloud_msg_to_arrays(conv.pointcloud2_msg(np.zeros((0, 3)), np.zeros(0), 0, "lidar"))
    assert empty.shape == (0, 3) and times.shape == (0,)


def test_cloud_organised_rosbags_roundtrip():
    """An organised cloud (4 rows, NaN no-returns and an all-zero no-return, padded rows) written with the rosbags
    typestore, serialised and read back as a bag delivers it."""
    pts = PTS.copy()
    pts[[1, 7, 8]] = np.nan
    pts[5] = 0.0
    pts[9, 2] = np.inf
    f = bags.pointcloud2_fields(pts, np.linspace(-0.1, 0.0, 24), height=4)
    assert not f["is_dense"]
    rows = np.zeros((4, f["row_step"] + 5), np.uint8)
    rows[:, : f["row_step"]] = f["data"].reshape(4, -1)
    ts = bags.default_typestore()
    T = ts.types
    msg = T["sensor_msgs/msg/PointCloud2"](
        header=T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=12, nanosec=500_000_000),
                                        frame_id="lidar"),
        height=4, width=6, fields=[T["sensor_msgs/msg/PointField"](name=n, offset=o, datatype=d, count=c)
                                   for n, o, d, c in f["fields"]],
        is_bigendian=False, point_step=f["point_step"], row_step=f["row_step"] + 5, data=rows.ravel(), is_dense=False)
    back = ts.deserialize_cdr(ts.serialize_cdr(msg, msg.__msgtype__), msg.__msgtype__)
    xyz, times = bags.pointcloud_msg_to_arrays(back)
    keep = np.setdiff1d(np.arange(24), [1, 5, 7, 8, 9])
    assert np.array_equal(xyz, PTS[keep]) and np.allclose(times, np.linspace(-0.1, 0.0, 24)[keep], atol=1e-7)


@pytest.mark.parametrize("big", [False, True])
def test_cloud_layouts(big):
    """Field order shuffled, extra fields, FLOAT64 coordinates, padded points and rows, big-endian, organised."""
    n = 24
    ring = np.arange(n) % 4
    cols = [("intensity", "f4", np.arange(n) * 0.5), ("ring", "u2", ring), ("z", "f8", PTS[:, 2]),
            ("reflectivity", "u1", np.full(n, 7)), ("y", "f4", PTS[:, 1]), ("x", "f8", PTS[:, 0])]
    for height, point_pad, row_pad in ((1, 0, 0), (1, 3, 0), (4, 2, 9)):
        m = cloud_msg(cols, height, point_pad, row_pad, big)
        xyz, times = bags.pointcloud_msg_to_arrays(m)
        assert times is None and np.array_equal(xyz, PTS), (height, point_pad, row_pad)
    # FLOAT64 coordinates beyond float32's range are no returns too (they would read inf)
    far = PTS.astype(np.float64)
    far[3, 0] = 1e300
    m = cloud_msg([("x", "f8", far[:, 0]), ("y", "f8", far[:, 1]), ("z", "f8", far[:, 2])], big=big)
    assert np.array_equal(bags.pointcloud_msg_to_arrays(m)[0], np.delete(PTS, 3, axis=0))


REL = np.linspace(0.0, 0.099, 24)
"""Per-point offsets from the header stamp in seconds (a 10 Hz sweep)."""


STAMP_S = STAMP_NS // 10**9 + (STAMP_NS % 10**9) * 1e-9


@pytest.mark.parametrize("name, code, values, stamp_ns, expected", [
    ("time", "f4", REL, STAMP_NS, REL),  # Velodyne: relative seconds
    ("time", "f4", REL - 0.1, STAMP_NS, REL - 0.1),  # stamped at the sweep's end: negative offsets
    ("t", "u4", np.round(REL * 1e9), STAMP_NS, REL),  # Ouster: relative nanoseconds
    ("timestamp", "f8", STAMP_S + REL, STAMP_NS, REL),  # Hesai, RoboSense: absolute seconds
    ("timestamp", "f8", STAMP_NS + REL * 1e9, STAMP_NS, REL),  # Livox: absolute nanoseconds in a FLOAT64
    ("timestamp", "f8", 12.5 + REL, 12_500_000_000, REL),  # a simulated clock: absolute, but small
    ("time", "f4", REL, 12_500_000_000, REL),  # a simulated clock: relative
    ("time", "f4", REL, 0, REL),  # no stamp: relative
    ("time_stamp", "f8", STAMP_S + REL, STAMP_NS, REL),
    ("offset_time", "u4", np.round(REL * 1e9), STAMP_NS, REL),  # Livox CustomMsg -> PointCloud2 converters
    ("t", "i4", np.round((REL - 0.05) * 1e9), STAMP_NS, REL - 0.05),
])
def test_cloud_time_conventions(name, code, values, stamp_ns, expected):
    m = cloud_msg([("x", "f4", PTS[:, 0]), ("y", "f4", PTS[:, 1]), ("z", "f4", PTS[:, 2]),
                   ("intensity", "f4", np.ones(24)), (name, code, values)], stamp_ns=stamp_ns, point_pad=2)
    xyz, times = bags.pointcloud_msg_to_arrays(m)
    assert np.array_equal(xyz, PTS) and times.dtype == np.float64
    assert np.allclose(times, expected, rtol=0, atol=1e-6), np.abs(times - expected).max()


def test_cloud_time_validation():
    xyz = [("x", "f4", PTS[:, 0]), ("y", "f4", PTS[:, 1]), ("z", "f4", PTS[:, 2])]
    # a sensor clock that is not the header's (seconds since boot against epoch stamps): no usable offsets
    m = cloud_msg(xyz + [("timestamp", "f8", 1234.5 + REL)], stamp_ns=STAMP_NS)
    with pytest.raises(ValueError, match="point time 1235 s from the header stamp"):
        bags.pointcloud_msg_to_arrays(m)
    m = cloud_msg(xyz + [("time", "f4", REL)])
    m.fields[3].count = 2
    m.point_step += 4
    m.row_step = m.point_step * 24
    m.data = bytes(m.row_step)
    with pytest.raises(ValueError, match="time field 'time' has datatype 7 and count 2"):
        bags.pointcloud_msg_to_arrays(m)
    # a non-finite time drops its point only
    t = REL.copy()
    t[4] = np.nan
    got, times = bags.pointcloud_msg_to_arrays(cloud_msg(xyz + [("time", "f8", t)]))
    assert np.array_equal(got, np.delete(PTS, 4, axis=0)) and np.isfinite(times).all() and len(times) == 23


def test_cloud_validation():
    xyz = [("x", "f4", PTS[:, 0]), ("y", "f4", PTS[:, 1]), ("z", "f4", PTS[:, 2])]

    def check(m, match):
        with pytest.raises(ValueError, match=match):
            bags.pointcloud_msg_to_arrays(m)

    check(cloud_msg(xyz[:2] + [("intensity", "f4", PTS[:, 2])]), r"cloud has no 'z' field \(fields: 'x', 'y', 'int")
    check(cloud_msg([("x", "u4", PTS[:, 0])] + xyz[1:]), r"field 'x' has datatype 6: x, y and z must be FLOAT32")
    m = cloud_msg(xyz)
    m.fields[1].datatype = 42
    check(m, "field 'y' has datatype 42")
    m = cloud_msg(xyz)
    m.fields[2].count = 3
    check(m, "field 'z' has count 3")
    m = cloud_msg(xyz + [("ring", "u2", np.zeros(24))])
    m.point_step = 13  # ring ends at byte 14
    check(m, "point_step 13 is smaller than field 'ring' \\(ends at byte 14\\)")
    m = cloud_msg(xyz, height=4)
    m.row_step = 6 * 12 - 1
    check(m, r"row_step 71 < width \* point_step = 72")
    m = cloud_msg(xyz, height=4, row_pad=4)
    m.data = bytes(m.data)[:-1]
    check(m, r"cloud data truncated: 303 bytes < height \* row_step = 304")
    m = cloud_msg(xyz)
    m.height, m.width = 4096, 4097
    check(m, "exceeds MAX_CLOUD_POINTS")
    with pytest.raises(ValueError, match="max_points"):
        bags.pointcloud_msg_to_arrays(cloud_msg(xyz), max_points=-1)
    # longer data than the layout needs is tolerated (read up to height * row_step)
    m = cloud_msg(xyz)
    m.data = bytes(m.data) + bytes(5)
    assert np.array_equal(bags.pointcloud_msg_to_arrays(m)[0], PTS)


def test_cloud_max_points():
    """A bounded read: exactly max_points valid points, a uniform and seeded sample, in the cloud's order."""
    n = 200_000
    idx = np.arange(n, dtype=np.float32)
    x = idx.copy()
    x[np.random.default_rng(0).random(n) < 0.4] = np.nan  # 40 % no-returns
    m = cloud_msg([("x", "f4", x), ("y", "f4", idx), ("z", "f4", np.ones(n)), ("t", "u4", idx)], height=100,
                  row_pad=4, stamp_ns=STAMP_NS)
    xyz, times = bags.pointcloud_msg_to_arrays(m, max_points=5000)
    assert xyz.shape == (5000, 3) and times.shape == (5000,)
    ids = xyz[:, 1].astype(np.int64)
    assert np.isfinite(xyz).all() and np.array_equal(xyz[:, 0], xyz[:, 1]) and np.all(np.diff(ids) > 0)
    assert np.allclose(times, ids * 1e-9)  # times stay with their points
    assert abs(np.mean(ids < n // 2) - 0.5) < 0.05 and abs(np.mean(ids % 2) - 0.5) < 0.05  # uniform
    again, _ = bags.pointcloud_msg_to_arrays(m, max_points=5000)
    other, _ = bags.pointcloud_msg_to_arrays(m, max_points=5000, seed=1)
    assert np.array_equal(xyz, again) and not np.array_equal(xyz, other)
    # a bound above the valid count (but below the cloud's size) returns every valid point
    valid = np.isfinite(x)
    all_pts, _ = bags.pointcloud_msg_to_arrays(m, max_points=n - 1)
    assert len(all_pts) == valid.sum() and np.array_equal(all_pts[:, 1], idx[valid])
    assert np.array_equal(bags.pointcloud_msg_to_arrays(m)[0], all_pts)
    assert bags.pointcloud_msg_to_arrays(m, max_points=0)[0].shape == (0, 3)
