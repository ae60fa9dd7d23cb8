"""ROS message <-> numpy conversions, one small function per conversion, each validating its input.

Every ``*_to_*`` reader raises ``ValueError`` with a human-readable reason on a malformed message (wrong encoding,
step/size mismatch, non-finite values, non-unit quaternion ...); callers count and drop such messages.

Frames: ROS optical frames (REP 103: z forward, x right, y down) are converted to the model's OpenGL camera axes
(x right, y up, z back) by :func:`nerf_mapping.geometry.optical_pose_to_model_c2w`, never here;
the quaternion math is :mod:`nerf_mapping.geometry.rigid`'s, the validation of message values is here.
"""
from __future__ import annotations

import numpy as np

from nerf_mapping.geometry.rigid import matrix_from_quat_xyzw, quat_xyzw_from_matrix

QUAT_NORM_TOL = 1e-2
"""|1 - |q|| above this is rejected (publishers normalise; a sloppy float32 quaternion stays well within)."""

_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
MAX_IMAGE_PIXELS = 8192 * 8192


# ---------------------------------------------------------------------------------------------------------- time
def stamp_to_ns(stamp) -> int:
    """builtin_interfaces/Time -> int nanoseconds (ValueError when negative / out of range)."""
    sec, nsec = int(stamp.sec), int(stamp.nanosec)
    if sec < 0 or not 0 <= nsec < 1_000_000_000:
        raise ValueError(f"invalid stamp sec={sec} nanosec={nsec}")
    return sec * 1_000_000_000 + nsec


def ns_to_stamp(ns: int):
    from builtin_interfaces.msg import Time

    sec, nsec = divmod(int(ns), 1_000_000_000)
    return Time(sec=sec, nanosec=nsec)


def _header(stamp, frame_id: str):
    from std_msgs.msg import Header

    if isinstance(stamp, (int, np.integer)):
        stamp = ns_to_stamp(int(stamp))
    return Header(stamp=stamp, frame_id=str(frame_id))


# ---------------------------------------------------------------------------------------------------------- images
def _pixel_rows(msg, bytes_per_pixel: int) -> tuple[int, int, np.ndarray]:
    """(height, width, uint8 [H, W * bytes_per_pixel] pixel bytes without the row padding) of a sensor_msgs/Image,
    after checking its size, step and data length (ValueError)."""
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0 or h * w > MAX_IMAGE_PIXELS:
        raise ValueError(f"invalid image size {w}x{h}")
    if step < w * bytes_per_pixel:
        raise ValueError(f"step {step} < width * bytes per pixel = {w * bytes_per_pixel}")
    data = msg.data
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else \
        np.asarray(data, dtype=np.uint8)
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


def array_to_image_msg(arr: np.ndarray, stamp, frame_id: str, encoding: str = "rgb8"):
    """uint8 [H,W,3] (rgb8/bgr8) or [H,W] (mono8) array -> sensor_msgs/Image (input assumed RGB for bgr8)."""
    from sensor_msgs.msg import Image

    a = np.asarray(arr)
    if a.dtype != np.uint8:
        raise ValueError(f"expected uint8 array, got {a.dtype}")
    if encoding == "mono8":
        if a.ndim != 2:
            raise ValueError("mono8 needs a [H,W] array")
        c = 1
    elif encoding in ("rgb8", "bgr8"):
        if a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"{encoding} needs a [H,W,3] array, got {a.shape}")
        if encoding == "bgr8":
            a = a[:, :, ::-1]
        c = 3
    else:
        raise ValueError(f"unsupported output encoding {encoding!r}")
    a = np.ascontiguousarray(a)
    h, w = a.shape[:2]
    msg = Image(header=_header(stamp, frame_id), height=h, width=w, encoding=encoding, is_bigendian=0, step=w * c)
    msg.data = a.tobytes()
    return msg


def depth_array_to_image_msg(depth: np.ndarray, stamp, frame_id: str):
    """float [H,W] depth (metres) -> 32FC1 sensor_msgs/Image (little endian)."""
    from sensor_msgs.msg import Image

    d = np.ascontiguousarray(np.asarray(depth, dtype="<f4"))
    if d.ndim != 2:
        raise ValueError(f"depth must be [H,W], got {d.shape}")
    h, w = d.shape
    msg = Image(header=_header(stamp, frame_id), height=h, width=w, encoding="32FC1", is_bigendian=0, step=w * 4)
    msg.data = d.tobytes()
    return msg


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
    q = np.array([x, y, z, w], dtype=np.float64)
    if not np.all(np.isfinite(q)):
        raise ValueError("quaternion is not finite")
    n = float(np.linalg.norm(q))
    if abs(n - 1.0) > QUAT_NORM_TOL:
        raise ValueError(f"quaternion is not unit (norm {n:.4f})")
    return matrix_from_quat_xyzw(q / n)


def _matrix_to_quat_xyzw(R: np.ndarray) -> tuple[float, float, float, float]:
    return tuple(float(v) for v in quat_xyzw_from_matrix(R))


def _translation(x, y, z) -> np.ndarray:
    t = np.array([float(x), float(y), float(z)])
    if not np.all(np.isfinite(t)):
        raise ValueError("position is not finite")
    return t


def pose_msg_to_matrix(pose) -> np.ndarray:
    """geometry_msgs/Pose -> 4x4 float64 (ValueError on non-finite values or a non-unit quaternion)."""
    T = np.eye(4)
    o = pose.orientation
    T[:3, :3] = _quat_xyzw_to_matrix(o.x, o.y, o.z, o.w)
    T[:3, 3] = _translation(pose.position.x, pose.position.y, pose.position.z)
    return T


def matrix_to_pose_msg(T, q_xyzw=None):
    """4x4 -> geometry_msgs/Pose; ``q_xyzw``: its rotation's quaternion when the caller converted many at once."""
    from geometry_msgs.msg import Point, Pose, Quaternion

    T = np.asarray(T, dtype=np.float64)
    x, y, z, w = _matrix_to_quat_xyzw(T[:3, :3]) if q_xyzw is None else (float(v) for v in q_xyzw)
    return Pose(position=Point(x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
                orientation=Quaternion(x=x, y=y, z=z, w=w))


def transform_msg_to_matrix(tf) -> np.ndarray:
    """geometry_msgs/Transform -> 4x4 (same validation as poses)."""
    T = np.eye(4)
    r = tf.rotation
    T[:3, :3] = _quat_xyzw_to_matrix(r.x, r.y, r.z, r.w)
    T[:3, 3] = _translation(tf.translation.x, tf.translation.y, tf.translation.z)
    return T


def matrix_to_transform_msg(T):
    from geometry_msgs.msg import Quaternion, Transform, Vector3

    T = np.asarray(T, dtype=np.float64)
    x, y, z, w = _matrix_to_quat_xyzw(T[:3, :3])
    return Transform(translation=Vector3(x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
                     rotation=Quaternion(x=x, y=y, z=z, w=w))


def transform_stamped(T, stamp, parent: str, child: str):
    from geometry_msgs.msg import TransformStamped

    return TransformStamped(header=_header(stamp, parent), child_frame_id=child, transform=matrix_to_transform_msg(T))


def odometry_to_matrix(msg) -> np.ndarray:
    """nav_msgs/Odometry -> 4x4 T_frame_child (header.frame_id <- child_frame_id)."""
    return pose_msg_to_matrix(msg.pose.pose)


def pose_stamped_to_matrix(msg) -> np.ndarray:
    return pose_msg_to_matrix(msg.pose)


# ---------------------------------------------------------------------------------------------------------- outputs
PATH_MAX_POSES = 2000
"""Poses a published path holds at most: the newest half of them all, the older ones evenly thinned (a looping bag
or an hour of mapping keeps thousands of keyframes; building a message per pose each second cost the node's
executor thread a fifth of a core at 20 000)."""


def path_msg(poses, stamps, frame_id: str, stamp=None, max_poses: int = PATH_MAX_POSES):
    """List of 4x4 poses (+ per-pose stamps in ns) -> nav_msgs/Path in ``frame_id`` (header stamp = last pose's);
    beyond ``max_poses`` the older half is thinned evenly (the first pose and the newest ones are always kept)."""
    from geometry_msgs.msg import PoseStamped
    from nav_msgs.msg import Path

    stamps = [int(s) for s in stamps]
    poses = list(poses)
    msg = Path(header=_header(stamp if stamp is not None else (stamps[-1] if stamps else 0), frame_id))
    n = len(poses)
    if n > max_poses > 1:
        keep_new = max_poses // 2
        old = np.linspace(0, n - keep_new - 1, max_poses - keep_new).round().astype(int)
        idx = np.unique(np.concatenate([old, np.arange(n - keep_new, n)]))
        poses, stamps = [poses[i] for i in idx], [stamps[i] for i in idx]
    if not poses:
        return msg
    T = np.asarray(poses, dtype=np.float64).reshape(-1, 4, 4)
    q = quat_xyzw_from_matrix(T[:, :3, :3])  # one batched conversion
    msg.poses = [PoseStamped(header=_header(s, frame_id), pose=matrix_to_pose_msg(t, a)) for t, a, s in zip(T, q, stamps)]
    return msg


def pack_rgb_float(colors) -> np.ndarray:
    """uint8 [N,3] -> float32 [N] with the PCL/RViz packed-rgb bit layout (0x00RRGGBB)."""
    c = np.asarray(colors, dtype=np.uint32).reshape(-1, 3)
    packed = (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]
    return packed.astype(np.uint32).view(np.float32)


def pointcloud2_xyzrgb(points, colors=None, extra_fields: dict | None = None, stamp=0, frame_id: str = "map"):
    """points float [N,3], colors uint8 [N,3] (optional), extra float32 [N] fields -> sensor_msgs/PointCloud2."""
    from sensor_msgs.msg import PointCloud2, PointField

    pts = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    n = pts.shape[0]
    cols: list[tuple[str, np.ndarray]] = [("x", pts[:, 0]), ("y", pts[:, 1]), ("z", pts[:, 2])]
    if colors is not None:
        cols.append(("rgb", pack_rgb_float(colors)))
    for name, vals in (extra_fields or {}).items():
        v = np.asarray(vals, dtype=np.float32).reshape(-1)
        if v.shape[0] != n:
            raise ValueError(f"field {name!r} has {v.shape[0]} values for {n} points")
        cols.append((name, v))
    dtype = np.dtype({"names": [c[0] for c in cols], "formats": ["<f4"] * len(cols),
                      "offsets": [4 * i for i in range(len(cols))], "itemsize": 4 * len(cols)})
    rec = np.zeros(n, dtype=dtype)
    for name, v in cols:
        rec[name] = v
    fields = [PointField(name=name, offset=4 * i, datatype=PointField.FLOAT32, count=1) for i, (name, _) in enumerate(cols)]
    msg = PointCloud2(header=_header(stamp, frame_id), height=1, width=n, fields=fields, is_bigendian=False,
                      point_step=4 * len(cols), row_step=4 * len(cols) * n, is_dense=True)
    msg.data = rec.tobytes()
    return msg


def marker_triangle_list(vertices, triangles, colors=None, stamp=0, frame_id: str = "map", ns: str = "mesh",
                         marker_id: int = 0):
    """Mesh (vertices float [V,3], triangles int [T,3], per-vertex colors uint8 [V,3]) -> Marker TRIANGLE_LIST."""
    from geometry_msgs.msg import Point
    from std_msgs.msg import ColorRGBA
    from visualization_msgs.msg import Marker

    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    t = np.asarray(triangles, dtype=np.int64).reshape(-1, 3)
    if t.size and (t.min() < 0 or t.max() >= len(v)):
        raise ValueError("triangle index out of range")
    m = Marker(header=_header(stamp, frame_id), ns=ns, id=int(marker_id), type=Marker.TRIANGLE_LIST,
               action=Marker.ADD)
    m.pose.orientation.w = 1.0
    m.scale.x = m.scale.y = m.scale.z = 1.0
    m.color = ColorRGBA(r=0.8, g=0.8, b=0.8, a=1.0)
    flat = t.reshape(-1)
    m.points = [Point(x=float(p[0]), y=float(p[1]), z=float(p[2])) for p in v[flat]]
    if colors is not None:
        c = np.asarray(colors, dtype=np.float64).reshape(-1, 3)[flat] / 255.0
        m.colors = [ColorRGBA(r=float(a), g=float(b), b=float(cc), a=1.0) for a, b, cc in c]
    return m


def mesh_marker_array(vertices, triangles, colors=None, stamp=0, frame_id: str = "map", ns: str = "mesh",
                      max_triangles: int = 20000):
    """A mesh as visualization_msgs/MarkerArray: a DELETEALL (clears the previous mesh) and TRIANGLE_LIST markers of
    at most ``max_triangles`` triangles each (RViz and DDS handle several moderate messages better than one huge)."""
    from visualization_msgs.msg import Marker, MarkerArray

    t = np.asarray(triangles, dtype=np.int64).reshape(-1, 3)
    if max_triangles < 1:
        raise ValueError("max_triangles must be >= 1")
    clear = Marker(header=_header(stamp, frame_id), ns=ns, action=Marker.DELETEALL)
    markers = [clear] + [marker_triangle_list(vertices, t[s:s + max_triangles], colors, stamp, frame_id, ns, k)
                         for k, s in enumerate(range(0, len(t), max_triangles))]
    return MarkerArray(markers=markers)
