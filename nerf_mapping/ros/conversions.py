"""numpy <-> ROS messages for the node: the message builders (they need the message packages), and the readers.

The readers (``*_to_ns`` / ``*_to_array(s)`` / ``*_to_matrix`` / ``*_to_intrinsics``) are ROS-free and live in
:mod:`nerf_mapping.bags` (the benchmarks read bags with them); they are re-exported here so the node converts
every message through this one module. They raise ``ValueError`` with a human-readable reason on a malformed message
(wrong encoding, step/size mismatch, non-finite values, non-unit quaternion ...); callers count and drop such
messages. The builders check their arrays the same way.

Frames: ROS optical frames (REP 103: z forward, x right, y down) are converted to the model's OpenGL camera axes
(x right, y up, z back) by :func:`nerf_mapping.geometry.optical_pose_to_model_c2w`, never here;
the quaternion math is :mod:`nerf_mapping.geometry.rigid`'s.
"""
from __future__ import annotations

import array

import numpy as np

from nerf_mapping.bags import (  # noqa: F401  (re-exported: the node's readers)
    DEPTH_ENCODINGS,
    LABEL_ENCODINGS,
    MAX_CLOUD_POINTS,
    MAX_IMAGE_PIXELS,
    MAX_POINT_TIME_S,
    POINT_TIME_FIELDS,
    QUAT_NORM_TOL,
    camera_info_to_intrinsics,
    compressed_image_to_array,
    depth_msg_to_array,
    image_msg_to_array,
    label_msg_to_array,
    odometry_to_matrix,
    pointcloud2_fields,
    pointcloud_msg_to_arrays,
    pose_msg_to_matrix,
    pose_stamped_to_matrix,
    stamp_to_ns,
    transform_msg_to_matrix,
)
from nerf_mapping.geometry.rigid import quat_xyzw_from_matrix


# ---------------------------------------------------------------------------------------------------------- time
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


def depth_image_msg(depth_m: np.ndarray, stamp_ns, frame_id: str, encoding: str = "16UC1"):
    """float [H,W] depth in metres along the optical axis -> sensor_msgs/Image (little endian, no row padding), as
    REP 118 has it: 16UC1 / mono16 in millimetres, rounded, where no return (0, NaN, inf, negative) and depths beyond
    65.535 m are written 0; 32FC1 in metres, written as given (NaN / inf included). ``stamp_ns``: int ns or a Time."""
    from sensor_msgs.msg import Image

    encoding = {"16uc1": "16UC1", "mono16": "mono16", "32fc1": "32FC1"}.get(str(encoding).lower(), encoding)
    if encoding not in ("16UC1", "mono16", "32FC1"):
        raise ValueError(f"unsupported depth encoding {encoding!r} (expected 16UC1, mono16 or 32FC1)")
    d = np.asarray(depth_m, dtype=np.float32 if encoding == "32FC1" else np.float64)
    if d.ndim != 2:
        raise ValueError(f"depth must be [H,W], got {d.shape}")
    if encoding == "32FC1":
        d = np.ascontiguousarray(d, dtype="<f4")
    else:
        with np.errstate(invalid="ignore", over="ignore"):
            mm = np.rint(d * 1000.0)
        d = np.where((mm > 0) & (mm <= 65535), mm, 0.0).astype("<u2")  # NaN fails both tests: written as 0
    h, w = d.shape
    msg = Image(header=_header(stamp_ns, frame_id), height=h, width=w, encoding=encoding, is_bigendian=0,
                step=w * d.itemsize)
    msg.data = array.array("B", d.tobytes())
    return msg


def depth_array_to_image_msg(depth: np.ndarray, stamp, frame_id: str):
    """float [H,W] depth (metres) -> 32FC1 sensor_msgs/Image (little endian): the node's rendered depth."""
    return depth_image_msg(depth, stamp, frame_id, "32FC1")


# ---------------------------------------------------------------------------------------------------------- poses
def _matrix_to_quat_xyzw(R: np.ndarray) -> tuple[float, float, float, float]:
    return tuple(float(v) for v in quat_xyzw_from_matrix(R))


def matrix_to_pose_msg(T, q_xyzw=None):
    """4x4 -> geometry_msgs/Pose; ``q_xyzw``: its rotation's quaternion when the caller converted many at once."""
    from geometry_msgs.msg import Point, Pose, Quaternion

    T = np.asarray(T, dtype=np.float64)
    x, y, z, w = _matrix_to_quat_xyzw(T[:3, :3]) if q_xyzw is None else (float(v) for v in q_xyzw)
    return Pose(position=Point(x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
                orientation=Quaternion(x=x, y=y, z=z, w=w))


def matrix_to_transform_msg(T):
    from geometry_msgs.msg import Quaternion, Transform, Vector3

    T = np.asarray(T, dtype=np.float64)
    x, y, z, w = _matrix_to_quat_xyzw(T[:3, :3])
    return Transform(translation=Vector3(x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
                     rotation=Quaternion(x=x, y=y, z=z, w=w))


def transform_stamped(T, stamp, parent: str, child: str):
    from geometry_msgs.msg import TransformStamped

    return TransformStamped(header=_header(stamp, parent), child_frame_id=child, transform=matrix_to_transform_msg(T))


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


def pointcloud2_msg(xyz, times, stamp_ns, frame_id: str, height: int = 1):
    """points float [N,3] (and per-point times [N] in seconds relative to the stamp, or None) -> sensor_msgs/PointCloud2
    of float32 x, y, z (, time) as :func:`nerf_mapping.bags.pointcloud2_fields` lays them out (Velodyne's time
    convention); ``height`` > 1 makes an organised cloud (NaN points: no returns). ``stamp_ns``: int ns or a Time."""
    from sensor_msgs.msg import PointCloud2, PointField

    f = pointcloud2_fields(xyz, times, height)
    msg = PointCloud2(header=_header(stamp_ns, frame_id), height=f["height"], width=f["width"],
                      fields=[PointField(name=n, offset=o, datatype=d, count=c) for n, o, d, c in f["fields"]],
                      is_bigendian=f["is_bigendian"], point_step=f["point_step"], row_step=f["row_step"],
                      is_dense=f["is_dense"])
    msg.data = array.array("B", f["data"].tobytes())
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
