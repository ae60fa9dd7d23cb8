"""rosbag2 writer for the demo scene (pure Python ``rosbags``; no rclpy).

Topics (all stamps in header.stamp == bag log time, nanoseconds):

- ``/camera/image_raw``       sensor_msgs/msg/Image, rgb8, frame_id ``camera_optical``         (image rate)
- ``/camera/camera_info``     sensor_msgs/msg/CameraInfo, plumb_bob with zero distortion, same stamps as images
- ``/odom``                   nav_msgs/msg/Odometry, ``odom`` -> ``base_link``, noisy          (odometry rate)
- ``/ground_truth/odometry``  nav_msgs/msg/Odometry, ``odom`` -> ``base_link``, exact (odom == world)
- ``/camera/labels``          sensor_msgs/msg/Image, mono8 class ids (labels.json), same stamps as the images: what a
                              2D segmenter would publish; the node's oracle ``labels`` teacher reads it
- ``/camera/depth/image_raw`` sensor_msgs/msg/Image, 16UC1 little-endian z-depth in millimetres (0 = no reading),
                              frame_id ``camera_optical``, same stamps as the images: the simulated depth camera
                              (aligned with the colour camera, so ``/camera/camera_info`` describes it too)
- ``/lidar/points``           sensor_msgs/msg/PointCloud2, frame_id ``lidar``, one per sweep (header stamp = sweep
                              start), height 1, float32 fields x, y, z, time (seconds after the header stamp); each
                              point in the lidar frame at its own capture time (no motion compensation)
- ``/tf_static``              tf2_msgs/msg/TFMessage ``base_link`` -> ``camera_optical`` (and ``base_link`` -> ``lidar``
                              when the bag has points), one message, offered QoS transient_local + reliable (what
                              static TF broadcasters offer), written first

Odometry runs on its own clock grid (not aligned with image stamps), so consumers must interpolate.
Messages are written in timestamp order. The extrinsics and scene id are also stored in the bag's ``custom_data``.
The labels, depth and points topics are optional (written when their loader is given).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .render import Intrinsics
from nerf_mapping.geometry.rigid import quat_xyzw_from_matrix

TOPIC_IMAGE = "/camera/image_raw"
TOPIC_CAMERA_INFO = "/camera/camera_info"
TOPIC_ODOM = "/odom"
TOPIC_GT_ODOM = "/ground_truth/odometry"
TOPIC_TF_STATIC = "/tf_static"
TOPIC_LABELS = "/camera/labels"
TOPIC_DEPTH = "/camera/depth/image_raw"
TOPIC_POINTS = "/lidar/points"
FRAME_ODOM, FRAME_BASE, FRAME_CAMERA, FRAME_LIDAR = "odom", "base_link", "camera_optical", "lidar"

MSGTYPES = {
    TOPIC_IMAGE: "sensor_msgs/msg/Image",
    TOPIC_CAMERA_INFO: "sensor_msgs/msg/CameraInfo",
    TOPIC_ODOM: "nav_msgs/msg/Odometry",
    TOPIC_GT_ODOM: "nav_msgs/msg/Odometry",
    TOPIC_TF_STATIC: "tf2_msgs/msg/TFMessage",
    TOPIC_LABELS: "sensor_msgs/msg/Image",
    TOPIC_DEPTH: "sensor_msgs/msg/Image",
    TOPIC_POINTS: "sensor_msgs/msg/PointCloud2",
}


def get_scene_typestore():
    """The rosbags typestore used for writing (ROS 2 Kilted definitions: the distro this package targets)."""
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


@dataclass
class OdometryStream:
    stamps_ns: np.ndarray  # [M] int64
    poses: np.ndarray  # [M,4,4] T_odom_base
    linear: np.ndarray  # [M,3] body-frame linear velocity (m/s)
    angular: np.ndarray  # [M,3] body-frame angular velocity (rad/s)
    pose_cov_diag: tuple[float, ...]  # 6 variances: x, y, z, rot x, rot y, rot z
    twist_cov_diag: tuple[float, ...]


@dataclass
class LidarStream:
    stamps_ns: np.ndarray  # [S] int64 sweep starts (header stamps)
    t_base_lidar: np.ndarray  # [4,4] static pose of the lidar frame in base_link (written to /tf_static)
    load: Callable[[int], tuple[np.ndarray, np.ndarray]]  # sweep index -> (xyz [n,3] lidar frame, time [n] s)


class _Msgs:
    """Message constructors bound to one typestore (keeps the writer code readable)."""

    def __init__(self, ts) -> None:
        self.ts = ts
        self.t = ts.types

    def header(self, stamp_ns: int, frame_id: str):
        sec, nsec = divmod(int(stamp_ns), 1_000_000_000)
        return self.t["std_msgs/msg/Header"](stamp=self.t["builtin_interfaces/msg/Time"](sec=sec, nanosec=nsec),
                                              frame_id=frame_id)

    def vec3(self, v):
        return self.t["geometry_msgs/msg/Vector3"](x=float(v[0]), y=float(v[1]), z=float(v[2]))

    def quat(self, q):
        return self.t["geometry_msgs/msg/Quaternion"](x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3]))

    def image(self, stamp_ns: int, rgb: np.ndarray):
        h, w = rgb.shape[:2]
        mono = rgb.ndim == 2
        return self.t["sensor_msgs/msg/Image"](
            header=self.header(stamp_ns, FRAME_CAMERA), height=h, width=w, encoding="mono8" if mono else "rgb8",
            is_bigendian=0, step=(1 if mono else 3) * w, data=np.ascontiguousarray(rgb, np.uint8).reshape(-1))

    def depth_image(self, stamp_ns: int, depth_mm: np.ndarray):
        """16UC1 little-endian image of uint16 millimetres [H,W]."""
        h, w = depth_mm.shape
        data = np.ascontiguousarray(depth_mm, dtype="<u2").view(np.uint8).reshape(-1)
        return self.t["sensor_msgs/msg/Image"](header=self.header(stamp_ns, FRAME_CAMERA), height=h, width=w,
                                                encoding="16UC1", is_bigendian=0, step=2 * w, data=data)

    def pointcloud2(self, stamp_ns: int, xyz: np.ndarray, times: np.ndarray):
        """Unorganised cloud with float32 x, y, z, time (:func:`nerf_mapping.bags.pointcloud2_fields`)."""
        from nerf_mapping.bags import pointcloud2_fields

        f = pointcloud2_fields(xyz, times)
        field = self.t["sensor_msgs/msg/PointField"]
        return self.t["sensor_msgs/msg/PointCloud2"](
            header=self.header(stamp_ns, FRAME_LIDAR), height=f["height"], width=f["width"],
            fields=[field(name=n, offset=o, datatype=d, count=c) for n, o, d, c in f["fields"]],
            is_bigendian=bool(f["is_bigendian"]), point_step=f["point_step"], row_step=f["row_step"],
            data=f["data"], is_dense=bool(f["is_dense"]))

    def camera_info(self, stamp_ns: int, info: dict):
        """``info``: width, height, k [3,3], and optionally distortion_model (default plumb_bob) and d."""
        k = np.asarray(info["k"], float).reshape(3, 3)
        p = np.concatenate([k, np.zeros((3, 1))], 1)
        roi = self.t["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        return self.t["sensor_msgs/msg/CameraInfo"](
            header=self.header(stamp_ns, FRAME_CAMERA), height=int(info["height"]), width=int(info["width"]),
            distortion_model=info.get("distortion_model", "plumb_bob"), d=np.asarray(info.get("d", np.zeros(5)), float),
            k=k.reshape(-1), r=np.eye(3).reshape(-1), p=p.reshape(-1), binning_x=0, binning_y=0, roi=roi)

    def odometry(self, stamp_ns: int, pose: np.ndarray, q: np.ndarray, lin, ang, pcov: np.ndarray, tcov: np.ndarray):
        g = self.t
        pose_msg = g["geometry_msgs/msg/Pose"](
            position=g["geometry_msgs/msg/Point"](x=float(pose[0, 3]), y=float(pose[1, 3]), z=float(pose[2, 3])),
            orientation=self.quat(q))
        twist_msg = g["geometry_msgs/msg/Twist"](linear=self.vec3(lin), angular=self.vec3(ang))
        return g["nav_msgs/msg/Odometry"](
            header=self.header(stamp_ns, FRAME_ODOM), child_frame_id=FRAME_BASE,
            pose=g["geometry_msgs/msg/PoseWithCovariance"](pose=pose_msg, covariance=pcov),
            twist=g["geometry_msgs/msg/TwistWithCovariance"](twist=twist_msg, covariance=tcov))

    def tf_static(self, stamp_ns: int, children: dict[str, np.ndarray]):
        """One TFMessage with base_link -> each child frame (``{frame_id: T_base_child}``)."""
        g = self.t
        out = []
        for child, t_base_child in children.items():
            tr = g["geometry_msgs/msg/Transform"](translation=self.vec3(t_base_child[:3, 3]),
                                                   rotation=self.quat(quat_xyzw_from_matrix(t_base_child[:3, :3])))
            out.append(g["geometry_msgs/msg/TransformStamped"](header=self.header(stamp_ns, FRAME_BASE),
                                                               child_frame_id=child, transform=tr))
        return g["tf2_msgs/msg/TFMessage"](transforms=out)


def _static_qos():
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    zero = QosTime(sec=0, nsec=0)  # 0 = unspecified (rmw default) for deadline / lifespan / lease
    return [Qos(history=QosHistory.KEEP_LAST, depth=1, reliability=QosReliability.RELIABLE,
                durability=QosDurability.TRANSIENT_LOCAL, deadline=zero, lifespan=zero,
                liveliness=QosLiveliness.AUTOMATIC, liveliness_lease_duration=zero,
                avoid_ros_namespace_conventions=False)]


def write_scene_bag(
    path: Path,
    storage: str,
    intr: Intrinsics,
    image_stamps_ns: np.ndarray,
    load_image,  # callable: frame index -> uint8 [H,W,3] (read back from the PNGs so bag == files)
    noisy: OdometryStream,
    ground_truth: OdometryStream,
    t_base_cam: np.ndarray,
    custom_data: dict[str, str] | None = None,
    camera_info_for=None,  # callable: frame index -> CameraInfo dict (see _Msgs.camera_info); default from intr
    load_labels=None,  # callable: frame index -> uint8 [H,W] class ids (written on TOPIC_LABELS); None: no topic
    load_depth=None,  # callable: frame index -> uint16 [H,W] millimetres (written on TOPIC_DEPTH); None: no topic
    lidar: LidarStream | None = None,  # sweeps written on TOPIC_POINTS, its mount on /tf_static; None: no topic
) -> dict[str, int]:
    """Write the bag directory ``path`` (must not exist). Returns message counts per topic.

    The camera is ``intr`` (pinhole, no distortion) for every frame unless ``camera_info_for`` gives per-frame
    intrinsics and distortion (datasets converted to bags). Depth images share the colour images' stamps."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    plugins = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
    if storage not in plugins:
        raise ValueError(f"bag storage must be one of {sorted(plugins)}, got {storage!r}")
    ts = get_scene_typestore()
    msgs = _Msgs(ts)
    optional = {TOPIC_LABELS: load_labels is not None, TOPIC_DEPTH: load_depth is not None,
                TOPIC_POINTS: lidar is not None}
    topics = {t: m for t, m in MSGTYPES.items() if optional.get(t, True)}
    counts = {topic: 0 for topic in topics}
    tf_children = {FRAME_CAMERA: t_base_cam} | ({FRAME_LIDAR: lidar.t_base_lidar} if lidar is not None else {})

    # event list sorted by stamp; ties resolved by topic order below (tf_static first, image before its camera_info)
    order = {TOPIC_TF_STATIC: 0, TOPIC_IMAGE: 1, TOPIC_CAMERA_INFO: 2, TOPIC_LABELS: 3, TOPIC_DEPTH: 4,
             TOPIC_POINTS: 5, TOPIC_GT_ODOM: 6, TOPIC_ODOM: 7}
    starts = [image_stamps_ns.min(), noisy.stamps_ns.min(), ground_truth.stamps_ns.min()]
    if lidar is not None and len(lidar.stamps_ns):
        starts.append(np.min(lidar.stamps_ns))
    t_start = int(min(starts))
    events = [(t_start, order[TOPIC_TF_STATIC], TOPIC_TF_STATIC, 0)]
    per_image = [TOPIC_IMAGE, TOPIC_CAMERA_INFO] + [t for t in (TOPIC_LABELS, TOPIC_DEPTH) if t in topics]
    events += [(int(s), order[t], t, i) for t in per_image for i, s in enumerate(image_stamps_ns)]
    if lidar is not None:
        events += [(int(s), order[TOPIC_POINTS], TOPIC_POINTS, i) for i, s in enumerate(lidar.stamps_ns)]
    events += [(int(s), order[TOPIC_ODOM], TOPIC_ODOM, i) for i, s in enumerate(noisy.stamps_ns)]
    events += [(int(s), order[TOPIC_GT_ODOM], TOPIC_GT_ODOM, i) for i, s in enumerate(ground_truth.stamps_ns)]
    events.sort()

    quats = {TOPIC_ODOM: quat_xyzw_from_matrix(noisy.poses[:, :3, :3]),
             TOPIC_GT_ODOM: quat_xyzw_from_matrix(ground_truth.poses[:, :3, :3])}
    streams = {TOPIC_ODOM: noisy, TOPIC_GT_ODOM: ground_truth}

    with Writer(path, version=9, storage_plugin=plugins[storage]) as writer:
        for key, value in (custom_data or {}).items():
            writer.set_custom_data(key, value)
        conns = {
            topic: writer.add_connection(topic, msgtype, typestore=ts,
                                         offered_qos_profiles=_static_qos() if topic == TOPIC_TF_STATIC else ())
            for topic, msgtype in topics.items()
        }
        for stamp, _, topic, i in events:
            if topic == TOPIC_TF_STATIC:
                msg = msgs.tf_static(stamp, tf_children)
            elif topic == TOPIC_IMAGE:
                msg = msgs.image(stamp, load_image(i))
            elif topic == TOPIC_LABELS:
                msg = msgs.image(stamp, np.asarray(load_labels(i), np.uint8))
            elif topic == TOPIC_DEPTH:
                msg = msgs.depth_image(stamp, np.asarray(load_depth(i), np.uint16))
            elif topic == TOPIC_POINTS:
                msg = msgs.pointcloud2(stamp, *lidar.load(i))
            elif topic == TOPIC_CAMERA_INFO:
                msg = msgs.camera_info(stamp, camera_info_for(i) if camera_info_for else
                                       {"width": intr.width, "height": intr.height, "k": intr.k_matrix()})
            else:
                s = streams[topic]
                pcov = np.diag(np.asarray(s.pose_cov_diag, float)).reshape(-1)
                tcov = np.diag(np.asarray(s.twist_cov_diag, float)).reshape(-1)
                msg = msgs.odometry(stamp, s.poses[i], quats[topic][i], s.linear[i], s.angular[i], pcov, tcov)
            writer.write(conns[topic], stamp, ts.serialize_cdr(msg, MSGTYPES[topic]))
            counts[topic] += 1
    return counts


def extrinsic_custom_data(t_base_cam: np.ndarray, t_base_lidar: np.ndarray | None = None) -> dict[str, str]:
    out = {
        "nerf_mapping.scene": "demo_scene",
        "nerf_mapping.extrinsic_base_to_camera_optical": json.dumps(np.asarray(t_base_cam).tolist()),
    }
    if t_base_lidar is not None:
        out["nerf_mapping.extrinsic_base_to_lidar"] = json.dumps(np.asarray(t_base_lidar).tolist())
    return out
