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
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField  # noqa: E402

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


SPECIAL = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, -1.0, 1e-30, 3e38, 1e300, -1e300])
"""Values a range reader must survive: no-return markers, negatives, denormals, values beyond float32's range."""


def _sprinkle(rng: np.random.Generator, values: np.ndarray, rate: float) -> np.ndarray:
    """``values`` (float64) with a fraction ``rate`` of them replaced by SPECIAL ones."""
    out = values.astype(np.float64)
    hit = rng.random(out.shape) < rate
    out[hit] = rng.choice(SPECIAL, size=int(hit.sum()))
    return out


@st.composite
def depth_images(draw):
    """A valid depth image (pixels with no-return markers and garbage sprinkled in), then maybe corrupted."""
    enc = draw(st.sampled_from(["16UC1", "mono16", "32FC1"]))
    h, w, pad, big = draw(st.integers(1, 6)), draw(st.integers(1, 6)), draw(st.integers(0, 5)), draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if enc == "32FC1":
        with np.errstate(over="ignore"):
            px = _sprinkle(rng, rng.uniform(0, 80, (h, w)), draw(st.floats(0, 1))).astype((">" if big else "<") + "f4")
    else:
        px = rng.integers(0, 65536, (h, w)).astype((">" if big else "<") + "u2")
    rows = np.zeros((h, w * px.itemsize + pad), np.uint8)
    rows[:, : w * px.itemsize] = px.view(np.uint8).reshape(h, -1)
    m = _image(enc, h, w, rows.shape[1], rows.tobytes(), int(big))
    for what in draw(st.lists(st.sampled_from(["encoding", "height", "width", "step", "cut", "grow", "endian"]),
                              max_size=2)):
        if what == "encoding":
            m.encoding = draw(st.sampled_from(ENCODINGS + ["16uc1", "32fc1", "64FC1", "16SC1"]))
        elif what in ("height", "width", "step"):
            setattr(m, what, draw(st.one_of(st.integers(0, 50), st.sampled_from([2**31 - 1, 2**32 - 1]))))
        elif what == "cut":
            m.data = bytes(m.data)[: draw(st.integers(0, max(len(m.data) - 1, 0)))]
        elif what == "grow":
            m.data = bytes(m.data) + bytes(draw(st.integers(1, 9)))
        else:
            m.is_bigendian = 1 - m.is_bigendian
    return m


@FUZZ
@given(st.one_of(depth_images(), images()))
def test_fuzz_depth_images(msg):
    """Depth reads as finite, non-negative metres of the image's size, or raises ValueError."""
    try:
        out = bags.depth_msg_to_array(msg)
    except ValueError:
        return
    assert out.dtype == np.float32 and out.shape == (msg.height, msg.width)
    assert np.isfinite(out).all() and not np.signbit(out).any()
    if msg.encoding.lower() != "32fc1":
        assert out.max() <= 65.535


CLOUD_TYPES = {"i1": 1, "u1": 2, "i2": 3, "u2": 4, "i4": 5, "u4": 6, "f4": 7, "f8": 8}
CLOUD_TIMES = [None, ("time", "f4"), ("t", "u4"), ("timestamp", "f8"), ("time_stamp", "f8"), ("offset_time", "u4"),
               ("t", "i2"), ("time", "u1")]
CLOUD_EXTRAS = [("intensity", "f4"), ("ring", "u2"), ("reflectivity", "u1"), ("noise", "i4"), ("range", "f8"),
                ("label", "i1"), ("ambient", "i2")]
U32 = st.one_of(st.integers(0, 64), st.sampled_from([2**31 - 1, 2**32 - 1, 2**24, 2**12 + 1]))


@st.composite
def clouds(draw):
    """A valid cloud of random layout (coordinate types, field order, extra fields, time convention, padding,
    byte order, organised or not, no-returns and garbage sprinkled in), then maybe corrupted."""
    time_field = draw(st.sampled_from(CLOUD_TIMES))
    cols = [("x", draw(st.sampled_from(["f4", "f8"]))), ("y", draw(st.sampled_from(["f4", "f8"]))),
            ("z", draw(st.sampled_from(["f4", "f8"])))] + ([time_field] if time_field else [])
    cols = draw(st.permutations(cols + draw(st.lists(st.sampled_from(CLOUD_EXTRAS), max_size=3, unique=True))))
    height, width = draw(st.integers(1, 4)), draw(st.integers(0, 8))
    point_pad, row_pad, big = draw(st.integers(0, 4)), draw(st.integers(0, 6)), draw(st.booleans())
    n = height * width
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rate = draw(st.sampled_from([0.0, 0.05, 0.5, 1.0]))
    stamp_s = draw(st.sampled_from([0, 12, 1_700_000_000]))
    order = ">" if big else "<"
    offsets = np.cumsum([0] + [np.dtype(c).itemsize for _, c in cols])
    step = int(offsets[-1]) + point_pad
    rec = np.zeros(n, np.dtype({"names": [c[0] for c in cols], "formats": [order + c for _, c in cols],
                                "offsets": [int(o) for o in offsets[:-1]], "itemsize": step}))
    for name, code in cols:
        if name in "xyz":
            v = _sprinkle(rng, rng.normal(0, 20, n), rate)
        elif code[0] == "f":
            rel = rng.uniform(-0.1, 0.1, n)
            v = _sprinkle(rng, rel + (stamp_s if name in ("timestamp", "time_stamp") else 0), rate / 4)
        else:
            info = np.iinfo(code)
            v = rng.integers(info.min, info.max, n, endpoint=True)
        with np.errstate(over="ignore", invalid="ignore"):
            rec[name] = v
    rows = np.zeros((height, width * step + row_pad), np.uint8)
    rows[:, : width * step] = rec.view(np.uint8).reshape(height, -1)
    m = PointCloud2(height=height, width=width, is_bigendian=big, point_step=step, row_step=rows.shape[1],
                    fields=[PointField(name=name, offset=int(o), datatype=CLOUD_TYPES[c], count=1)
                            for (name, c), o in zip(cols, offsets)])
    m.data = rows.tobytes()
    m.header.stamp.sec = stamp_s
    for what in draw(st.lists(st.sampled_from(["height", "width", "point_step", "row_step", "name", "datatype",
                                               "count", "offset", "drop", "cut", "grow", "bytes", "endian",
                                               "stamp"]), max_size=3)):
        f = m.fields[draw(st.integers(0, len(m.fields) - 1))] if m.fields else PointField()
        if what in ("height", "width", "point_step", "row_step"):
            setattr(m, what, draw(U32))
        elif what == "name":
            f.name = draw(st.sampled_from(["x", "y", "z", "t", "time", "timestamp", "", "X", "rgb"]))
        elif what == "datatype":
            f.datatype = draw(st.integers(0, 255))
        elif what == "count":
            f.count = draw(U32)
        elif what == "offset":
            f.offset = draw(U32)
        elif what == "drop" and m.fields:
            m.fields = [g for g in m.fields if g is not f]
        elif what == "cut":
            m.data = bytes(m.data)[: draw(st.integers(0, max(len(m.data) - 1, 0)))]
        elif what == "grow":
            m.data = bytes(m.data) + bytes(draw(st.integers(1, 9)))
        elif what == "bytes":
            m.data = draw(st.binary(min_size=len(m.data), max_size=len(m.data)))
        elif what == "endian":
            m.is_bigendian = not m.is_bigendian
        elif what == "stamp":
            m.header.stamp.sec = draw(st.integers(-2**31, 2**31 - 1))
    return m


@FUZZ
@given(clouds(), st.one_of(st.none(), st.integers(0, 40)), st.integers(0, 3))
def test_fuzz_point_clouds(msg, max_points, seed):
    """A cloud reads as finite, non-zero float32 points with finite times within MAX_POINT_TIME_S of the stamp (a
    bounded read: a subset of the unbounded one), or raises ValueError."""
    try:
        xyz, times = bags.pointcloud_msg_to_arrays(msg, max_points, seed)
    except ValueError:
        return
    assert xyz.dtype == np.float32 and xyz.ndim == 2 and xyz.shape[1] == 3 and xyz.flags.c_contiguous
    assert np.isfinite(xyz).all() and np.all(np.any(xyz != 0, axis=1)) and len(xyz) <= msg.height * msg.width
    assert max_points is None or len(xyz) <= max_points
    if times is not None:
        assert times.dtype == np.float64 and times.shape == (len(xyz),)
        assert np.isfinite(times).all() and np.abs(times).max(initial=0) <= bags.MAX_POINT_TIME_S
    try:
        every, _ = bags.pointcloud_msg_to_arrays(msg)
    except ValueError:  # a time beyond the bound the sample missed
        return
    assert max_points is not None or np.array_equal(xyz, every)
    assert {tuple(p) for p in xyz.tolist()} <= {tuple(p) for p in every.tolist()}


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
