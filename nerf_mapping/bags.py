"""rosbag2 files and ROS message -> numpy readers, without ROS: the core's (and the benchmarks') way into a bag.

Bags are read with the pure-Python ``rosbags`` library (no rclpy, no rosbag2_py, no sourced ROS installation):
:func:`open_reader` over a rosbag2 directory (mcap or sqlite3), its metadata.yaml, or a ROS 1 .bag, with the bag's own
message definitions (ROS 2 Kilted's, :func:`default_typestore`, where the bag has none).

The readers are duck-typed on the message fields: one function takes both a ``rosbags`` message deserialised from a
bag and the rclpy message a subscription delivers (:mod:`nerf_mapping.ros.conversions` re-exports them for the node,
beside the message builders, which need the message packages and stay there). Each validates its input and raises
``ValueError`` with a human-readable reason on a malformed message (wrong encoding, step/size mismatch, non-finite
values, non-unit quaternion ...); callers count and drop such messages. Range data reads as metres and seconds:
:func:`depth_msg_to_array` (REP 118 depth images, 0 = no return) and :func:`pointcloud_msg_to_arrays` (PointCloud2 of
any field layout -> points and per-point times relative to the header stamp, whichever driver's time convention).

Importing this module costs numpy only (``rosbags``, PIL and the geometry helpers, which bring torch, are imported on
use): ``nerf-mapping bag play`` opens bags through it and starts in a fraction of a second.

Frames: ROS optical frames (REP 103: z forward, x right, y down) are converted to the model's OpenGL camera axes
(x right, y up, z back) by :func:`nerf_mapping.geometry.optical_pose_to_model_c2w`, never here;
the quaternion math is :mod:`nerf_mapping.geometry.rigid`'s, the validation of message values is here.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

QUAT_NORM_TOL = 1e-2
"""|1 - |q|| above this is rejected (publishers normalise; a sloppy float32 quaternion stays well within)."""

_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
MAX_IMAGE_PIXELS = 8192 * 8192


# ---------------------------------------------------------------------------------------------------------- bags
@lru_cache(maxsize=1)
def default_typestore():
    """The ``rosbags`` typestore of ROS 2 Kilted (the distro this package targets)."""
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


def open_reader(bag: Path):
    """An opened-able ``rosbags.highlevel.AnyReader`` over ``bag`` (a rosbag2 directory, its metadata.yaml, or a
    ROS 1 .bag); the bag's own message definitions are used, ROS 2 Kilted definitions where the bag has none."""
    from rosbags.highlevel import AnyReader

    bag = Path(bag)
    if bag.name == "metadata.yaml":
        bag = bag.parent
    if not bag.exists():
        raise FileNotFoundError(f"bag {bag} not found")
    return AnyReader([bag], default_typestore=default_typestore())


# ---------------------------------------------------------------------------------------------------------- time
def stamp_to_ns(stamp) -> int:
    """builtin_interfaces/Time -> int nanoseconds (ValueError when negative / out of range)."""
    sec, nsec = int(stamp.sec), int(stamp.nanosec)
    if sec < 0 or not 0 <= nsec < 1_000_000_000:
        raise ValueError(f"invalid stamp sec={sec} nanosec={nsec}")
    return sec * 1_000_000_000 + nsec


# ---------------------------------------------------------------------------------------------------------- images
def _data_bytes(data) -> np.ndarray:
    """A message's ``uint8[]`` data (bytes, the rclpy ``array.array``, the ``rosbags`` numpy array, a list) as a flat
    uint8 array, without a copy where the data exposes a buffer (ValueError when it is not bytes)."""
    if isinstance(data, np.ndarray) and data.dtype != np.uint8:
        raise ValueError(f"message data must be uint8, got {data.dtype}")
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError, BufferError):  # no buffer (a list) or a non-contiguous array
        pass
    try:
        return np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"message data is not a byte sequence: {exc}") from None


def _pixel_rows(msg, bytes_per_pixel: int) -> tuple[int, int, np.ndarray]:
    """(height, width, uint8 [H, W * bytes_per_pixel] pixel bytes without the row padding) of a sensor_msgs/Image,
    after checking its size, step and data length (ValueError)."""
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0 or h * w > MAX_IMAGE_PIXELS:
        raise ValueError(f"invalid image size {w}x{h}")
    if step < w * bytes_per_pixel:
        raise ValueError(f"step {step} < width * bytes per pixel = {w * bytes_per_pixel}")
    buf = _data_bytes(msg.data)
    if buf.size != step * h:
        raise ValueError(f"data size {buf.size} != step * height = {step * h}")
    return h, w, buf.reshape(h, step)[:, : w * bytes_per_pixel]


def image_msg_to_array(msg) -> np.ndarray:
    """sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8) -> uint8 [H,W,3] RGB (alpha dropped, mono replicated)."""
    enc = str(msg.encoding).lower()
    if enc not in _CHANNELS:
        raise ValueError(f"unsupported image encoding {msg.encoding!r} (expected one of {', '.join(_CHANNELS)})")
    c = _CHANNELS[enc]
    h, w, rows = _pixel_rows(msg, c)
    arr = rows.reshape(h, w, c)
    if enc == "mono8":
        arr = np.repeat(arr, 3, axis=2)
    elif enc in ("bgr8", "bgra8"):
        arr = arr[:, :, 2::-1]
    else:
        arr = arr[:, :, :3]
    return np.ascontiguousarray(arr)


LABEL_ENCODINGS = {"mono8": np.uint8, "8uc1": np.uint8, "mono16": np.uint16, "16uc1": np.uint16}


def label_msg_to_array(msg) -> np.ndarray:
    """sensor_msgs/Image of per-pixel class ids (mono8 / 8UC1, or mono16 / 16UC1 with ids <= 255) -> uint8 [H,W]."""
    enc = str(msg.encoding).lower()
    if enc not in LABEL_ENCODINGS:
        raise ValueError(f"unsupported label encoding {msg.encoding!r} (expected mono8, 8UC1, mono16 or 16UC1)")
    dt = np.dtype(LABEL_ENCODINGS[enc]).newbyteorder(">" if msg.is_bigendian else "<")
    h, w, rows = _pixel_rows(msg, dt.itemsize)
    arr = rows.copy().view(dt).reshape(h, w)
    if arr.dtype.itemsize > 1 and int(arr.max()) > 255:
        raise ValueError(f"class id {int(arr.max())} > 255")
    return np.ascontiguousarray(arr, dtype=np.uint8)


DEPTH_ENCODINGS = {"16uc1": (np.uint16, 1000.0), "mono16": (np.uint16, 1000.0), "32fc1": (np.float32, 1.0)}
"""Depth image encodings :func:`depth_msg_to_array` reads -> (pixel type, units per metre): REP 118 stores uint16
depth in millimetres and float depth in metres."""


def depth_msg_to_array(msg) -> np.ndarray:
    """sensor_msgs/Image of depth (16UC1 / mono16 in millimetres, 32FC1 in metres; REP 118) -> float32 [H,W] metres
    along the optical axis, 0 where there is no return: 0, NaN, +-inf and negative values all read as 0.

    ``is_bigendian`` and the row padding of ``step`` are honoured; an unknown encoding, a step/size mismatch, truncated
    data or more than MAX_IMAGE_PIXELS pixels raise ValueError.
    """
    enc = str(msg.encoding).lower()
    if enc not in DEPTH_ENCODINGS:
        raise ValueError(f"unsupported depth encoding {msg.encoding!r} (expected 16UC1, mono16 or 32FC1)")
    pixel, per_metre = DEPTH_ENCODINGS[enc]
    dt = np.dtype(pixel).newbyteorder(">" if msg.is_bigendian else "<")
    h, w, rows = _pixel_rows(msg, dt.itemsize)
    depth = rows.view(dt).astype(np.float32)  # the rows keep their padding stride: one copy, to native float32
    if per_metre != 1.0:
        depth /= np.float32(per_metre)
    depth[~((depth > 0) & (depth < np.inf))] = 0.0  # NaN fails both comparisons
    return depth.reshape(h, w)


def compressed_image_to_array(msg) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg / png) -> uint8 [H,W,3] RGB."""
    import io

    from PIL import Image

    fmt = str(msg.format).lower()
    if not any(k in fmt for k in ("jpeg", "jpg", "png")):
        raise ValueError(f"unsupported compressed format {msg.format!r} (expected jpeg or png)")
    raw = bytes(msg.data)
    if not raw:
        raise ValueError("empty compressed image")
    try:
        with Image.open(io.BytesIO(raw)) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise ValueError(f"compressed image too large: {im.width}x{im.height}")
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except ValueError:
        raise
    except Exception as exc:  # PIL raises many types on corrupt data
        raise ValueError(f"cannot decode compressed image: {exc}") from None
    return np.ascontiguousarray(arr)


# ---------------------------------------------------------------------------------------------------------- camera
def camera_info_to_intrinsics(msg) -> dict:
    """sensor_msgs/CameraInfo -> dict(fx, fy, cx, cy, width, height, distortion [k1,k2,k3,k4,p1,p2], model).

    plumb_bob / rational_polynomial -> OPENCV (rational terms k4..k6 beyond the model are rejected when non-zero),
    equidistant -> OPENCV_FISHEYE; no distortion -> PINHOLE. Binning and ROI are applied when set.
    """
    w, h = int(msg.width), int(msg.height)
    if w <= 0 or h <= 0 or w * h > MAX_IMAGE_PIXELS:
        raise ValueError(f"invalid camera size {w}x{h}")
    k = np.asarray(msg.k, dtype=np.float64)
    if k.size != 9 or not np.all(np.isfinite(k)):
        raise ValueError("camera K must hold 9 finite values")
    fx, fy, cx, cy = float(k[0]), float(k[4]), float(k[2]), float(k[5])
    if fx <= 0 or fy <= 0:
        raise ValueError(f"focal lengths must be positive, got fx={fx} fy={fy}")
    d = np.asarray(msg.d, dtype=np.float64)
    if not np.all(np.isfinite(d)):
        raise ValueError("distortion coefficients must be finite")
    model_name = str(msg.distortion_model).lower()
    dist = [0.0] * 6  # k1, k2, k3, k4, p1, p2
    if model_name in ("plumb_bob", "rational_polynomial", ""):
        # ROS order: k1, k2, p1, p2, k3 [, k4, k5, k6]
        if d.size not in (0, 4, 5, 8, 14):
            raise ValueError(f"{model_name or 'plumb_bob'}: unexpected number of coefficients {d.size}")
        dd = np.zeros(8)
        dd[: min(d.size, 8)] = d[:8]
        if np.any(np.abs(dd[5:8]) > 1e-12):
            raise ValueError("rational_polynomial with non-zero k4..k6 is not supported by the OPENCV model")
        dist = [dd[0], dd[1], dd[4], 0.0, dd[2], dd[3]]
        model = "OPENCV" if any(abs(v) > 0 for v in dist) else "PINHOLE"
    elif model_name in ("equidistant", "fisheye"):
        if d.size < 4:
            raise ValueError(f"equidistant needs 4 coefficients, got {d.size}")
        dist = [d[0], d[1], d[2], d[3], 0.0, 0.0]
        model = "OPENCV_FISHEYE"
    else:
        raise ValueError(f"unsupported distortion model {msg.distortion_model!r}")
    bx, by = max(int(msg.binning_x), 1), max(int(msg.binning_y), 1)
    roi = msg.roi
    if int(roi.width) > 0 and int(roi.height) > 0:
        cx -= float(roi.x_offset)
        cy -= float(roi.y_offset)
    if bx > 1 or by > 1:
        fx, cx, fy, cy = fx / bx, cx / bx, fy / by, cy / by
    return {"fx": fx, "fy": fy, "cx": cx, "cy": cy, "width": w // bx if bx > 1 else w,
            "height": h // by if by > 1 else h, "distortion": [float(v) for v in dist], "model": model}


# ---------------------------------------------------------------------------------------------------------- poses
def _quat_xyzw_to_matrix(x: float, y: float, z: float, w: float) -> np.ndarray:
    """A message quaternion -> 3x3, after validation (finite, unit within QUAT_NORM_TOL: ValueError otherwise)."""
    from nerf_mapping.geometry.rigid import matrix_from_quat_xyzw  # torch comes with the geometry package

    q = np.array([x, y, z, w], dtype=np.float64)
    if not np.all(np.isfinite(q)):
        raise ValueError("quaternion is not finite")
    n = float(np.linalg.norm(q))
    if abs(n - 1.0) > QUAT_NORM_TOL:
        raise ValueError(f"quaternion is not unit (norm {n:.4f})")
    return matrix_from_quat_xyzw(q / n)


def _translation(x, y, z) -> np.ndarray:
    t = np.array([float(x), float(y), float(z)])
    if not np.all(np.isfinite(t)):
        raise ValueError("position is not finite")
    return t


def _rigid(q, t) -> np.ndarray:
    """A quaternion (x y z w fields) and a translation (x y z fields) -> 4x4 float64, validated."""
    T = np.eye(4)
    T[:3, :3] = _quat_xyzw_to_matrix(q.x, q.y, q.z, q.w)
    T[:3, 3] = _translation(t.x, t.y, t.z)
    return T


def pose_msg_to_matrix(pose) -> np.ndarray:
    """geometry_msgs/Pose -> 4x4 float64 (ValueError on non-finite values or a non-unit quaternion)."""
    return _rigid(pose.orientation, pose.position)


def transform_msg_to_matrix(tf) -> np.ndarray:
    """geometry_msgs/Transform -> 4x4 (same validation as poses)."""
    return _rigid(tf.rotation, tf.translation)


def odometry_to_matrix(msg) -> np.ndarray:
    """nav_msgs/Odometry -> 4x4 T_frame_child (header.frame_id <- child_frame_id)."""
    return pose_msg_to_matrix(msg.pose.pose)


def pose_stamped_to_matrix(msg) -> np.ndarray:
    return pose_msg_to_matrix(msg.pose)


# ---------------------------------------------------------------------------------------------------------- range
POINTFIELD_FLOAT32 = 7
"""sensor_msgs/PointField datatype of float32 (FLOAT64 is 8, UINT32 is 6)."""


def pointcloud2_fields(xyz: np.ndarray, times: np.ndarray | None = None, height: int = 1) -> dict:
    """The fields of a sensor_msgs/PointCloud2 holding points ``xyz`` [N,3] (float32 x, y, z) and optionally a float32
    ``time`` per point (seconds relative to the header stamp, Velodyne driver style), as a plain dict: ``height``,
    ``width``, ``fields`` (a list of ``(name, offset, datatype, count)``), ``is_bigendian``, ``point_step``,
    ``row_step``, ``data`` (uint8 array) and ``is_dense``. Message builders (a bag writer's typestore, rclpy) turn it
    into their own message type; ``height`` > 1 makes an organised cloud (N must divide by it)."""
    xyz = np.asarray(xyz, dtype=np.float32).reshape(-1, 3)
    names = ["x", "y", "z"] + (["time"] if times is not None else [])
    rec = np.zeros(len(xyz), dtype=[(n, "<f4") for n in names])
    rec["x"], rec["y"], rec["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    if times is not None:
        rec["time"] = np.asarray(times, dtype=np.float32).reshape(-1)
    if height < 1 or len(xyz) % height:
        raise ValueError(f"{len(xyz)} points do not fill {height} rows")
    width = len(xyz) // height
    step = rec.dtype.itemsize
    return {"height": int(height), "width": int(width),
            "fields": [(n, 4 * i, POINTFIELD_FLOAT32, 1) for i, n in enumerate(names)],
            "is_bigendian": False, "point_step": int(step), "row_step": int(step * width),
            "data": np.frombuffer(rec.tobytes(), dtype=np.uint8), "is_dense": bool(np.isfinite(xyz).all())}


POINTFIELD_DTYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}
"""sensor_msgs/PointField datatype (INT8 = 1 ... FLOAT64 = 8) -> numpy type code (the byte order is the message's)."""
MAX_CLOUD_POINTS = 2**24
"""width * height above this is rejected (a 128-beam LiDAR at 2048 columns sends 262 144 points a sweep)."""
POINT_TIME_FIELDS = ("time", "t", "timestamp", "time_stamp", "offset_time")
"""Per-point time fields, the first present one is read: Velodyne ``time`` (FLOAT32 s relative to the stamp), Ouster
``t`` (UINT32 ns relative), Hesai / RoboSense ``timestamp`` (FLOAT64 absolute s), Livox ``timestamp`` (FLOAT64 absolute
ns), ``time_stamp`` / ``offset_time`` (either convention)."""
MAX_POINT_TIME_S = 10.0
"""A point time further than this from the header stamp (after conversion to relative seconds) rejects the cloud: a
sweep lasts a fraction of a second, so such a time is a wrong convention or an unsynchronised sensor clock."""


def _cloud_fields(msg) -> dict[str, tuple[int, int, int]]:
    """name -> (offset, datatype, count) of the first field of each name; fields are PointField messages or
    ``(name, offset, datatype, count)`` tuples (:func:`pointcloud2_fields`'s)."""
    out: dict[str, tuple[int, int, int]] = {}
    for f in msg.fields:
        name, off, dt, cnt = f if isinstance(f, tuple) else (f.name, f.offset, f.datatype, f.count)
        out.setdefault(str(name), (int(off), int(dt), int(cnt)))
    return out


def _time_field(fields: dict) -> str | None:
    return next((n for n in POINT_TIME_FIELDS if n in fields), None)


def _cloud_layout(msg) -> tuple[int, int, int, int, dict, np.ndarray]:
    """(height, width, point_step, row_step, fields, uint8 data) of a sensor_msgs/PointCloud2, after checking that
    x, y, z exist as single FLOAT32 / FLOAT64 values, that every field fits in point_step, every row in row_step and
    every row in the data (ValueError)."""
    h, w, ps, rs = int(msg.height), int(msg.width), int(msg.point_step), int(msg.row_step)
    if min(h, w, ps, rs) < 0:
        raise ValueError(f"invalid cloud layout height={h} width={w} point_step={ps} row_step={rs}")
    if h * w > MAX_CLOUD_POINTS:
        raise ValueError(f"cloud of {w}x{h} = {w * h} points exceeds MAX_CLOUD_POINTS = {MAX_CLOUD_POINTS}")
    fields = _cloud_fields(msg)
    for axis in "xyz":
        if axis not in fields:
            raise ValueError(f"cloud has no {axis!r} field (fields: {', '.join(map(repr, fields)) or 'none'})")
        _, dt, cnt = fields[axis]
        if dt not in (7, 8):
            raise ValueError(f"field {axis!r} has datatype {dt}: x, y and z must be FLOAT32 (7) or FLOAT64 (8)")
        if cnt != 1:
            raise ValueError(f"field {axis!r} has count {cnt}: x, y and z must hold one value each")
    time_field = _time_field(fields)
    if time_field is not None:
        _, dt, cnt = fields[time_field]
        if dt not in POINTFIELD_DTYPES or cnt != 1:
            raise ValueError(f"time field {time_field!r} has datatype {dt} and count {cnt}: expected one number")
    for name, (off, dt, cnt) in fields.items():
        if off < 0 or cnt < 0:
            raise ValueError(f"field {name!r} has offset {off} and count {cnt}")
        if dt in POINTFIELD_DTYPES:  # an extra field of unknown type is ignored (its size is unknown)
            end = off + np.dtype(POINTFIELD_DTYPES[dt]).itemsize * cnt
            if end > ps:
                raise ValueError(f"point_step {ps} is smaller than field {name!r} (ends at byte {end})")
    if rs < w * ps:
        raise ValueError(f"row_step {rs} < width * point_step = {w * ps}")
    buf = _data_bytes(msg.data)
    if buf.size < h * rs:
        raise ValueError(f"cloud data truncated: {buf.size} bytes < height * row_step = {h * rs}")
    return h, w, ps, rs, fields, buf


def _relative_times(raw: np.ndarray, datatype: int, header) -> np.ndarray:
    """Per-point times as the message holds them -> float64 seconds relative to the header stamp.

    Units: integer fields hold nanoseconds; float fields hold seconds, or nanoseconds when their median magnitude is
    above 1e12 (Livox's absolute FLOAT64 ns: epoch seconds are ~1.7e9, a sweep's offsets well under 1). Relative or
    absolute: the times are absolute when their median lies closer to the header stamp than to zero (this holds with
    simulated clocks too, and a zero stamp always reads relative). ValueError when a time lands further than
    MAX_POINT_TIME_S from the stamp.
    """
    if raw.size == 0:
        return raw.astype(np.float64)
    stamp_ns = stamp_to_ns(header.stamp) if header is not None else 0
    probe = raw[:: max(1, raw.size // 1024)]  # the medians' sample: enough to tell 0.05 from 1.7e9
    magnitude = float(np.median(np.abs(probe)))
    nanoseconds = datatype <= 6 or magnitude > 1e12
    if nanoseconds:
        stamp = float(stamp_ns)
        absolute = float(np.median(np.abs(probe - stamp))) < magnitude
        t = (raw - stamp) * 1e-9 if absolute else raw * 1e-9
    else:
        sec, nsec = divmod(stamp_ns, 1_000_000_000)
        absolute = float(np.median(np.abs(probe - sec - nsec * 1e-9))) < magnitude
        t = (raw - float(sec)) - nsec * 1e-9 if absolute else raw  # whole seconds first: no precision lost
    far = float(np.abs(t).max())
    if not far <= MAX_POINT_TIME_S:
        raise ValueError(f"point time {far:.4g} s from the header stamp (> MAX_POINT_TIME_S = {MAX_POINT_TIME_S}): "
                         f"not one sweep's offsets ({'absolute' if absolute else 'relative'} "
                         f"{'ns' if nanoseconds else 's'} assumed; unsynchronised sensor clock?)")
    return np.ascontiguousarray(t, dtype=np.float64)


def pointcloud_msg_to_arrays(msg, max_points: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """sensor_msgs/PointCloud2 -> (xyz float32 [N,3] in the message's frame, times float64 [N] in seconds relative to
    the header stamp, or None when the cloud has no time field).

    Any point_step, field order and extra fields; x, y, z as FLOAT32 or FLOAT64; ``is_bigendian``; organised clouds
    (height > 1, padded row_step) and unorganised ones. Per-point times are read from the first of
    POINT_TIME_FIELDS present (conventions: :func:`_relative_times`). Points with a non-finite coordinate or time
    (organised clouds' no-returns) and all-zero points (some drivers' no-returns) are dropped; the rest keep the
    cloud's order. With ``max_points``, at most that many valid points are returned, drawn uniformly without
    replacement (seeded by ``seed``, deterministic) and read alone: a cloud of millions of points costs about what
    ``max_points`` does. Malformed layouts raise ValueError (see :func:`_cloud_layout`); an empty cloud gives [0,3].
    """
    h, w, ps, rs, fields, buf = _cloud_layout(msg)
    time_field = _time_field(fields)
    if max_points is not None and int(max_points) < 0:
        raise ValueError(f"max_points must be >= 0, got {max_points}")
    n = h * w
    if n == 0:  # numpy builds no view at an offset into an empty buffer
        return np.zeros((0, 3), np.float32), (np.zeros(0) if time_field else None)
    order = ">" if msg.is_bigendian else "<"

    def column(name: str) -> np.ndarray:  # [H, W] strided view of one field, no copy
        off, dt, _ = fields[name]
        return np.ndarray((h, w), dtype=np.dtype(POINTFIELD_DTYPES[dt]).newbyteorder(order), buffer=buf, offset=off,
                          strides=(rs, ps))

    cols = [column(a) for a in "xyz"] + ([column(time_field)] if time_field else [])

    def read(idx: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """x, y, z (float32 [3, K], one row per axis: the masks below run on contiguous rows), raw times and the
        validity mask of the points at flat indices ``idx`` (all when None)."""
        rc = None if idx is None else np.divmod(idx, w)
        xyz = np.empty((3, h * w if idx is None else idx.size), np.float32)
        with np.errstate(over="ignore"):  # FLOAT64 beyond float32's range becomes inf: dropped below
            for j, c in enumerate(cols[:3]):
                xyz[j] = (c if rc is None else c[rc]).reshape(-1)
        valid = np.isfinite(xyz[0]) & np.isfinite(xyz[1]) & np.isfinite(xyz[2])
        valid &= (xyz[0] != 0) | (xyz[1] != 0) | (xyz[2] != 0)
        raw = None
        if time_field:
            raw = (cols[3] if rc is None else cols[3][rc]).reshape(-1).astype(np.float64)
            valid &= np.isfinite(raw)
        return xyz, raw, valid

    if max_points is None or n <= int(max_points):
        xyz, raw, valid = read(None)
        sel = np.flatnonzero(valid)
    else:
        k = int(max_points)
        rng = np.random.default_rng(seed)
        m = min(n, 2 * k)  # candidates: organised clouds' no-returns are rarely half of them
        while True:
            cand = np.sort(rng.choice(n, size=m, replace=False))  # sorted: read in memory order
            xyz, raw, valid = read(cand)
            sel = np.flatnonzero(valid)
            if sel.size >= k or m == n:
                break
            m = min(n, 4 * m)
        if sel.size > k:  # k of a uniform sample's valid points: a uniform sample of the valid points
            sel = np.sort(rng.choice(sel, size=k, replace=False))
    points = np.empty((sel.size, 3), np.float32)
    for j in range(3):
        points[:, j] = xyz[j][sel]  # a gather per row: faster than selecting [N,3] rows with a mask
    times = None
    if time_field:
        times = _relative_times(raw[sel], fields[time_field][1], getattr(msg, "header", None))
    return points, times
