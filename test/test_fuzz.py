"""Property-based fuzzing (hypothesis) of every message conversion and request check the node relies on: random
and adversarial inputs either convert to a valid result or raise ValueError (which the node logs, counts and drops),
never another exception. The mapper's input handlers are fuzzed the same way: bad input is counted, never raised."""
from __future__ import annotations

import math

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytest.importorskip("rclpy")
from geometry_msgs.msg import Pose, PoseStamped  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402

from nerf_mapping import bags  # noqa: E402
from nerf_mapping.export.paths import safe_output_path  # noqa: E402
from nerf_mapping.ros import conversions as conv  # noqa: E402

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ENCODINGS = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "8UC1", "16UC1", "yuv422", "", "RGB8", "32FC1"]
floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
sizes = st.one_of(st.integers(0, 40), st.sampled_from([2**31 - 1, 2**32 - 1, 100000]))


def _image(enc, h, w, step, data, bigendian=0):
    m = Image()
    m.encoding, m.height, m.width, m.step, m.is_bigendian = enc, h, w, step, bigendian
    m.data = data
    return m


@st.composite
def images(draw):
    enc = draw(st.one_of(st.sampled_from(ENCODINGS), st.text(max_size=12)))
    h, w = draw(sizes), draw(sizes)
    c = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4}.get(enc.lower(), 1)
    step = draw(st.one_of(st.just(min(w * c, 2**32 - 1)), st.integers(0, 200), st.just(2**32 - 1)))
    n = draw(st.one_of(st.just(min(step * h, 20000)), st.integers(0, 600)))
    return _image(enc, h, w, step, bytes(draw(st.binary(min_size=n, max_size=n))), draw(st.integers(0, 1)))


@FUZZ
@given(images())
def test_fuzz_images_and_labels(msg):
    for fn in (bags.image_msg_to_array, bags.label_msg_to_array):
        try:
            out = fn(msg)
        except ValueError:
            continue
        assert out.dtype == np.uint8 and out.shape[:2] == (msg.height, msg.width)


@FUZZ
@given(st.sampled_from(["jpeg", "png", "", "tiff", "rgb8; jpeg compressed bgr8", "garbage"]), st.binary(max_size=300))
def test_fuzz_compressed_images(fmt, data):
    m = CompressedImage()
    m.format, m.data = fmt, data
    try:
        out = bags.compressed_image_to_array(m)
    except ValueError:
        return
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3


@FUZZ
@given(sizes, sizes, st.lists(floats, min_size=9, max_size=9),
       st.one_of(st.sampled_from(["plumb_bob", "rational_polynomial", "equidistant", "", "fisheye", "kannala"]),
                 st.text(max_size=10)),
       st.lists(floats, max_size=16))
def test_fuzz_camera_info(h, w, k, model, d):
    m = CameraInfo()
    m.height, m.width, m.k, m.distortion_model, m.d = h, w, k, model, d
    try:
        intr = bags.camera_info_to_intrinsics(m)
    except ValueError:
        return
    assert intr["fx"] > 0 and intr["fy"] > 0 and math.isfinite(intr["cx"]) and intr["width"] > 0
    assert all(math.isfinite(x) for x in intr["distortion"])


def _check_rigid(T):
    R = T[:3, :3]
    assert np.all(np.isfinite(T)) and np.allclose(R @ R.T, np.eye(3), atol=1e-6)


@FUZZ
@given(st.lists(floats, min_size=7, max_size=7))
def test_fuzz_poses(v):
    p = Pose()
    p.position.x, p.position.y, p.position.z = v[:3]
    p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w = v[3:]
    odo, ps = Odometry(), PoseStamped()
    odo.pose.pose, ps.pose = p, p
    for fn, msg in ((bags.pose_msg_to_matrix, p), (bags.odometry_to_matrix, odo), (bags.pose_stamped_to_matrix, ps)):
        try:
            _check_rigid(fn(msg))
        except ValueError:
            pass


@FUZZ
@given(st.integers(-2**40, 2**40), st.integers(-2**40, 2**40))
def test_fuzz_stamps(sec, nsec):
    class Stamp:
        pass

    s = Stamp()
    s.sec, s.nanosec = sec, nsec
    try:
        ns = bags.stamp_to_ns(s)
    except ValueError:
        return
    assert ns >= 0


NAMES = st.one_of(st.text(max_size=40), st.sampled_from(["..", "../x", "/etc/passwd", "a/../../b", "~/x", "a\x00b",
                                                         "a\\b", "", " ", "ok.ply", "sub/ok", "x" * 300]))


@FUZZ
@given(NAMES)
def test_fuzz_output_paths(name):
    import tempfile
    from pathlib import Path

    root = Path(tempfile.gettempdir()) / "nerf_mapping_fuzz_root"
    root.mkdir(exist_ok=True)
    try:
        p = safe_output_path(root, name, "default", ".ply")
    except ValueError:
        return
    assert root.resolve() in p.parents and p.suffix == ".ply"


@FUZZ
@given(st.one_of(st.text(max_size=1200), st.binary(max_size=50).map(lambda b: b.decode("latin-1"))),
       st.one_of(floats, st.integers(-5, 5)), st.lists(st.text(max_size=20), max_size=40))
def test_fuzz_query_requests(text, threshold, negatives):
    from nerf_mapping.semantics.query import QueryConfig
    from nerf_mapping.semantics.teachers import check_text

    try:
        t = check_text(text)
        assert t and len(t.encode("utf-8")) <= 1024
    except ValueError:
        pass
    try:
        cfg = QueryConfig(threshold=threshold, negatives=tuple(negatives) or ("object",)).validate()
    except ValueError:
        return
    assert 0.0 <= cfg.threshold <= 1.0 and 1 <= len(cfg.negatives) <= 32


@pytest.fixture(scope="module")
def idle_mapper():
    from nerf_mapping.mapping.config import MapperConfig, OnlineTrainingConfig
    from nerf_mapping.mapping.mapper import OnlineMapper

    m = OnlineMapper(MapperConfig(training=OnlineTrainingConfig(enabled=False)))
    yield m
    m.stop()


@FUZZ
@given(st.integers(-2**62, 2**62), st.sampled_from(["odom", "map", "", "x" * 100]), st.lists(floats, min_size=16,
                                                                                            max_size=16))
def test_fuzz_mapper_odometry(idle_mapper, stamp, frame, values):
    """Whatever odometry arrives, the mapper accepts or counts it; it never raises."""
    before = sum(idle_mapper.intake.counts.values())
    T = np.asarray(values).reshape(4, 4)
    try:
        T = bags.pose_msg_to_matrix(conv.matrix_to_pose_msg(T))
    except (ValueError, np.linalg.LinAlgError):
        T = np.eye(4)
    jumps = idle_mapper.intake.counts["time_jump_back"]
    idle_mapper.intake.add_odometry(stamp, frame, T)
    # counted exactly once as received or dropped (a stamp far in the past also counts as a clock jump)
    assert sum(idle_mapper.intake.counts.values()) - (idle_mapper.intake.counts["time_jump_back"] - jumps) == before + 1
