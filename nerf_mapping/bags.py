"""rosbag2 files and ROS message -> numpy readers, without ROS: the core's (and the benchmarks') way into a bag.

Bags are read with the pure-Python ``rosbags`` library (no rclpy, no rosbag2_py, no sourced ROS installation):
:func:`open_reader` over a rosbag2 directory (mcap or sqlite3), its metadata.yaml, or a ROS 1 .bag, with the bag's own
message definitions (ROS 2 Kilted's, :func:`default_typestore`, where the bag has none).

The readers are duck-typed on the message fields: one function takes both a ``rosbags`` message deserialised from a
bag and the rclpy message a subscription delivers (:mod:`nerf_mapping.ros.conversions` re-exports them for the node,
beside the message builders, which need the message packages and stay there). Each validates its input and raises
``ValueError`` with a human-readable reason on a malformed message (wrong encoding, step/size mismatch, non-finite
values, non-unit quaternion ...); callers count and drop such messages.

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

