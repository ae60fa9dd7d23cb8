"""ROS message conversions (no DDS: message objects only)."""
from __future__ import annotations

import io

import numpy as np
import pytest

pytest.importorskip("rclpy")
from geometry_msgs.msg import Pose, Transform  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402

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
                 "pose_stamped_to_matrix"):
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
