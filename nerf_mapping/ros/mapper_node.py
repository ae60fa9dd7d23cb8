"""``nerf_mapper``: the online mapping node.

Inputs (sensor QoS by default): camera images (raw or compressed) + CameraInfo, odometry (nav_msgs/Odometry or
geometry_msgs/PoseStamped), /tf_static for the base->camera extrinsic. Outputs: ``~/status`` (MapStatus),
``~/input_stats`` (std_msgs/String JSON with per-reason drop counters), ``~/rendered`` (periodic render at the latest
keyframe pose, stamped with that keyframe's stamp), ``~/path/odom`` + ``~/path/refined`` (nav_msgs/Path), ``/tf``
map->odom, ``~/mesh`` (Marker), ``~/segmentation`` (PointCloud2). Services under ``~/``: render_view, save_map,
load_map, export_mesh, query_segmentation.

Threads: subscription callbacks only validate, convert and enqueue; a keyframe worker interpolates odometry at the
image stamp, selects keyframes and adds them to the FrameStore; a training thread loops ``trainer.step()`` (and does
the periodic render between steps). The executor is single-threaded: rclpy's MultiThreadedExecutor with Fast DDS
re-reports a subscription as ready while a worker has not taken its message yet and spins the main thread at 100 %
(measured: ~1500 wake-ups/s per 10-50 Hz topic, which starved training to < 0.2 steps/s, cf. ros2/rclpy#1223).
Services are coroutines that hand their work to a service thread and await it, so a slow render or save never
blocks message intake, and they answer while training runs. Every input is validated; a bad message is counted and
dropped, never fatal.

Run: ``python -m nerf_mapping.ros.mapper_node --ros-args --params-file config/mapper.yaml``.
"""
from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np
import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data)
from rcl_interfaces.msg import ParameterDescriptor

from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry, Path as PathMsg
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import String
from tf2_msgs.msg import TFMessage
from visualization_msgs.msg import Marker

from nerf_mapping_interfaces.msg import MapStatus
from nerf_mapping_interfaces.srv import ExportMesh, LoadMap, QuerySegmentation, RenderView, SaveMap

from nerf_mapping.ros import conversions as conv
from nerf_mapping.ros.params import PARAMETERS, trainer_setup
from nerf_mapping.ros.sync import AFTER_BUFFER, EMPTY, OdometryBuffer
from nerf_mapping.training import drift

NODE_NAME = "nerf_mapper"
MAP_SUFFIX = ".pt"
RENDER_CHUNK = 1024  # rays per render chunk: bounds the peak memory of renders (samples x hidden width)


class Keyframe(NamedTuple):
    """Bookkeeping of one keyframe. The frame store holds it at ``T_map_odom @ T_odom_cam`` (model c2w)."""

    stamp_ns: int
    T_odom_base: np.ndarray  # raw odometry body pose (~/path/odom)
    T_odom_cam: np.ndarray   # raw odometry camera (optical) pose = T_odom_base @ T_base_cam
    T_map_odom: np.ndarray   # drift estimate applied when the keyframe entered the map


BOOL_OR_STRING = {"training.pose_refinement"}


# ------------------------------------------------------------------------------------------------- output paths
def safe_output_path(output_dir: Path, filename: str, default: str, suffix: str) -> Path:
    """Resolve a client-supplied file name under ``output_dir``; ValueError for absolute paths, '..', odd names or
    anything that resolves (symlinks included) outside the directory."""
    name = (filename or "").strip() or default
    if "\x00" in name or "\\" in name:
        raise ValueError("file name contains forbidden characters")
    p = PurePosixPath(name)
    if p.is_absolute() or name.startswith("~"):
        raise ValueError("absolute paths are not allowed: give a name relative to the output directory")
    if any(part in ("..", "") for part in p.parts) or not p.parts:
        raise ValueError("'..' is not allowed in file names")
    if len(name) > 255:
        raise ValueError("file name too long")
    if suffix and p.suffix != suffix:
        p = p.with_name(p.name + suffix)
    root = Path(output_dir).resolve()
    out = (root / Path(*p.parts)).resolve()
    if out != root and root not in out.parents:
        raise ValueError("path escapes the output directory")
    return out


class MapperNode(Node):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        for name, default, desc in PARAMETERS:
            # YAML and `-p` parse an unquoted off as the boolean false: such parameters accept either type
            self.declare_parameter(name, default, ParameterDescriptor(description=desc,
                                                                      dynamic_typing=name in BOOL_OR_STRING))
        g = self._p
        import torch

        self._torch = torch
        threads = int(g("training.threads"))
        if threads > 0:
            torch.set_num_threads(threads)

        # --- state
        self.counts: Counter = Counter()  # per-reason input counters (published on ~/input_stats)
        self._last_warn: dict[str, float] = {}
        self._counts_lock = threading.Lock()
        self.images_received = 0
        self.images_dropped = 0
        self.odom = OdometryBuffer(g("odom_buffer_s"), g("odom_max_gap_s"), g("odom_tolerance_s"))
        self.intrinsics: dict | None = None
        self.camera_frame = str(g("camera_frame"))
        self.base_frame = str(g("base_frame"))
        self.map_frame, self.odom_frame = str(g("map_frame")), str(g("odom_frame"))
        self._static_edges: dict[str, tuple[str, np.ndarray]] = {}  # child -> (parent, T_parent_child)
        self.T_base_cam_param = self._extrinsic_from_param()
        self.T_base_cam_tf: np.ndarray | None = None
        self._t_start = time.monotonic()
        self._t_first_image: float | None = None
        self._fallback_logged = False
        self._last_image_ns: int | None = None
        self._queue: deque = deque()
        self._queue_cv = threading.Condition()
        self._stop = threading.Event()
        self._state_lock = threading.RLock()  # guards trainer / frames swap (LoadMap) and keyframe bookkeeping
        self.output_dir = Path(str(g("output_dir"))).expanduser().resolve()
        self._latest_odom_ns = 0

        # keyframes
        from nerf_mapping.training.keyframes import KeyframeConfig, KeyframeSelector

        kc = KeyframeConfig(
            min_translation=float(g("keyframe.min_translation")), min_rotation_deg=float(g("keyframe.min_rotation_deg")),
            min_time_s=float(g("keyframe.min_time_s")), max_time_s=float(g("keyframe.max_time_s")),
            blur_ratio=float(g("keyframe.blur_ratio")), duplicate_threshold=float(g("keyframe.duplicate_threshold")),
            capacity=int(g("keyframe.capacity")), max_width=int(g("keyframe.max_width")))
        if kc.capacity < 2:
            raise ValueError("keyframe.capacity must be >= 2")
        self.kf_cfg = kc
        self.selector = KeyframeSelector(kc)
        # keyframe bookkeeping: live frame id -> Keyframe; history of all keyframes (frame id, Keyframe) for the paths
        self.kf_info: dict[int, Keyframe] = {}
        self.kf_history: deque = deque(maxlen=20000)
        self._latest_kf: int | None = None
        # (trainer, [F,3,4] camera-frame pose corrections): refreshed by the training thread after every step, so
        # publishers never read pose parameters while the trainer updates or grows them
        self._pose_snap: tuple | None = None

        self.trainer = self._build_trainer()
        self._rays_accum = 0.0
        self._rays_t = time.monotonic()
        self._rays_per_second = 0.0
        self._train_active = False
        self._train_t0: float | None = None

        # --- QoS and callback groups
        if str(g("sensor_qos")) not in ("sensor_data", "reliable"):
            raise ValueError("sensor_qos must be sensor_data or reliable")
        rel = qos_profile_sensor_data.reliability if str(g("sensor_qos")) == "sensor_data" else \
            ReliabilityPolicy.RELIABLE
        # SensorData semantics (best effort, volatile) with deeper reader histories than its depth 5 (images: 5 s at 10 Hz), so a
        # busy executor does not lose samples (50 Hz odometry would otherwise overflow within 0.1 s)
        sensor_qos = QoSProfile(depth=50, reliability=rel, history=HistoryPolicy.KEEP_LAST)
        odom_qos = QoSProfile(depth=200, reliability=rel, history=HistoryPolicy.KEEP_LAST)
        static_qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                                durability=DurabilityPolicy.TRANSIENT_LOCAL, history=HistoryPolicy.KEEP_LAST)
        self._cb_sensors = MutuallyExclusiveCallbackGroup()
        self._cb_odom = MutuallyExclusiveCallbackGroup()
        self._cb_timers = MutuallyExclusiveCallbackGroup()
        self._cb_services = ReentrantCallbackGroup()  # a service coroutine awaiting its worker must not hold a group

        transport = str(g("image_transport"))
        topic = str(g("image_topic"))
        if transport == "compressed":
            topic = topic if topic.endswith("/compressed") else topic.rstrip("/") + "/compressed"
            self.create_subscription(CompressedImage, topic, self._on_compressed, sensor_qos,
                                     callback_group=self._cb_sensors)
        elif transport == "raw":
            self.create_subscription(Image, topic, self._on_image, sensor_qos, callback_group=self._cb_sensors)
        else:
            raise ValueError("image_transport must be raw or compressed")
        self.create_subscription(CameraInfo, str(g("camera_info_topic")), self._on_camera_info, sensor_qos,
                                 callback_group=self._cb_sensors)
        otype = str(g("odom_type"))
        if otype in ("nav_msgs/Odometry", "nav_msgs/msg/Odometry", "Odometry"):
            self.create_subscription(Odometry, str(g("odom_topic")), self._on_odometry, odom_qos,
                                     callback_group=self._cb_odom)
        elif otype in ("geometry_msgs/PoseStamped", "geometry_msgs/msg/PoseStamped", "PoseStamped"):
            self.create_subscription(PoseStamped, str(g("odom_topic")), self._on_pose_stamped, odom_qos,
                                     callback_group=self._cb_odom)
        else:
            raise ValueError("odom_type must be nav_msgs/Odometry or geometry_msgs/PoseStamped")
        if bool(g("use_tf_static")):
            self.create_subscription(TFMessage, str(g("tf_static_topic")), self._on_tf_static, static_qos,
                                     callback_group=self._cb_odom)

        # --- publishers
        self.pub_status = self.create_publisher(MapStatus, "~/status", 10)
        self.pub_stats = self.create_publisher(String, "~/input_stats", 10)
        self.pub_rendered = self.create_publisher(Image, "~/rendered", 2)
        self.pub_path_odom = self.create_publisher(PathMsg, "~/path/odom", 2)
        self.pub_path_refined = self.create_publisher(PathMsg, "~/path/refined", 2)
        self.pub_mesh = self.create_publisher(Marker, "~/mesh", 1)
        self.pub_seg = self.create_publisher(PointCloud2, "~/segmentation", 1)
        self.pub_tf = self.create_publisher(TFMessage, "/tf", 10) if bool(g("publish_tf")) else None

        # --- services
        self._service_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nerf_mapper_service")
        for srv_type, name, fn in ((RenderView, "~/render_view", self._srv_render_view),
                                   (SaveMap, "~/save_map", self._srv_save_map),
                                   (LoadMap, "~/load_map", self._srv_load_map),
                                   (ExportMesh, "~/export_mesh", self._srv_export_mesh),
                                   (QuerySegmentation, "~/query_segmentation", self._srv_query_segmentation)):
            self.create_service(srv_type, name, self._offloaded(fn), callback_group=self._cb_services)

        # --- timers and threads
        self.create_timer(float(g("status_period_s")), self._publish_status, callback_group=self._cb_timers)
        if self.pub_tf is not None:
            self.create_timer(float(g("tf_period_s")), self._publish_tf, callback_group=self._cb_timers)
        self._render_period = float(g("render_period_s"))
        self._render_width = int(g("render_width"))
        self._next_render = 0.0
        self._last_odom_wall = 0.0
        self._worker = threading.Thread(target=self._keyframe_loop, name="nerf_mapper_keyframes", daemon=True)
        self._trainer_thread = threading.Thread(target=self._training_loop, name="nerf_mapper_training", daemon=True)
        self._worker.start()
        if bool(g("training.enabled")):
            self._trainer_thread.start()
        self.get_logger().info(
            f"nerf_mapper: image {topic} ({transport}), odom {g('odom_topic')} ({otype}), scene_box "
            f"{list(g('scene_box'))}, output_dir {self.output_dir}, hash encoding {self.trainer.field.encoding.impl}")

    # ------------------------------------------------------------------------------------------------ helpers
    def _p(self, name):
        return self.get_parameter(name).value

    def _count(self, reason: str, image: bool = False) -> None:
        with self._counts_lock:
            self.counts[reason] += 1
            if image:
                self.images_dropped += 1

    def _drop_image(self, reason: str, detail: str = "") -> None:
        self._count("image_" + reason, image=True)
        self._warn(f"image_{reason}", f"image dropped ({reason})" + (f": {detail}" if detail else ""))

    def _publish(self, pub, msg) -> None:
        """Publish unless the context is shutting down (the training thread may outlive the executor briefly)."""
        if self._stop.is_set() or not self.context.ok():
            return
        pub.publish(msg)

    def _warn(self, key: str, text: str, period: float = 5.0) -> None:
        """Warning throttled per key (rclpy's throttle is per call site, which would hide distinct reasons)."""
        now = time.monotonic()
        if now - self._last_warn.get(key, -1e9) >= period:
            self._last_warn[key] = now
            self.get_logger().warning(text)

    def _extrinsic_from_param(self) -> np.ndarray:
        v = [float(x) for x in self._p("extrinsic_base_camera")]
        if len(v) != 7:
            raise ValueError("extrinsic_base_camera must be [x, y, z, qx, qy, qz, qw]")
        from geometry_msgs.msg import Point, Pose, Quaternion

        return conv.pose_msg_to_matrix(Pose(position=Point(x=v[0], y=v[1], z=v[2]),
                                            orientation=Quaternion(x=v[3], y=v[4], z=v[5], w=v[6])))

    def _build_trainer(self):
        from nerf_mapping.training.frame_store import FrameStore
        from nerf_mapping.training.trainer import Trainer

        cfg, scene = trainer_setup(self._p)
        return Trainer(cfg, scene, FrameStore(capacity=self.kf_cfg.capacity, seed=cfg.seed))

    def _offloaded(self, fn):
        """Service callback that runs ``fn(request, response)`` on the service thread and awaits it: the executor
        (single-threaded, see the module docstring) keeps taking messages meanwhile. Requests are served one at a
        time, in arrival order."""
        from rclpy.task import Future

        async def callback(request, response):
            fut = Future(executor=self.executor)

            def run():
                try:
                    fut.set_result(fn(request, response))
                except BaseException as exc:  # noqa: BLE001 - the _srv_* functions answer errors themselves
                    fut.set_exception(exc)

            self._service_pool.submit(run)
            try:
                return await fut
            except Exception as exc:  # noqa: BLE001 - a failed request is answered, never fatal to the executor
                self.get_logger().error(f"service {getattr(fn, '__name__', fn)} failed: {exc!r}")
                if hasattr(response, "success"):
                    response.success, response.message = False, f"failed: {exc!r}"
                return response

        return callback

    def _camera_extrinsic(self) -> np.ndarray | None:
        """base->camera optical: from /tf_static when known, else (after waiting tf_wait_s from the first image for
        it) the parameter; None while still waiting."""
        if self.T_base_cam_tf is not None:
            return self.T_base_cam_tf
        if bool(self._p("use_tf_static")):
            t_first = self._t_first_image
            if t_first is None or time.monotonic() - t_first < float(self._p("tf_wait_s")):
                return None
            if not self._fallback_logged:
                self._fallback_logged = True
                self.get_logger().warning(f"no {self.base_frame}->{self.camera_frame or 'camera'} on /tf_static: "
                                          "using the extrinsic_base_camera parameter")
        return self.T_base_cam_param

    # ------------------------------------------------------------------------------------------------ callbacks
    def _check_stamp(self, stamp_ns: int) -> bool:
        if self._last_image_ns is not None and stamp_ns <= self._last_image_ns:
            self._drop_image("stamp_backwards", f"stamp {stamp_ns} <= previous {self._last_image_ns}")
            return False
        self._last_image_ns = stamp_ns
        return True

    def _enqueue(self, stamp_ns: int, frame_id: str, payload, decoder) -> None:
        if self._t_first_image is None:
            self._t_first_image = time.monotonic()
        with self._queue_cv:
            if len(self._queue) >= int(self._p("queue_size")):
                self._queue.popleft()
                self._drop_image("queue_full")
            self._queue.append((stamp_ns, frame_id, payload, decoder, time.monotonic()))
            self._queue_cv.notify()

    def _on_image(self, msg: Image) -> None:
        self.images_received += 1
        try:
            stamp_ns = conv.stamp_to_ns(msg.header.stamp)
            # validate header fields now (cheap); pixels are converted by the worker
            enc = str(msg.encoding).lower()
            if enc not in ("rgb8", "bgr8", "rgba8", "bgra8", "mono8"):
                raise ValueError(f"unsupported image encoding {msg.encoding!r}")
            c = {"rgba8": 4, "bgra8": 4, "mono8": 1}.get(enc, 3)
            if int(msg.step) < int(msg.width) * c or len(msg.data) != int(msg.step) * int(msg.height):
                raise ValueError(f"step/size mismatch: step {msg.step}, width {msg.width}x{c}, height {msg.height}, "
                                 f"data {len(msg.data)} bytes")
        except Exception as exc:  # noqa: BLE001 - any malformed message is dropped, never fatal
            self._drop_image("invalid", str(exc))
            return
        if self._check_stamp(stamp_ns):
            self._enqueue(stamp_ns, msg.header.frame_id, msg, conv.image_msg_to_array)

    def _on_compressed(self, msg: CompressedImage) -> None:
        self.images_received += 1
        try:
            stamp_ns = conv.stamp_to_ns(msg.header.stamp)
            if not len(msg.data):
                raise ValueError("empty compressed image")
        except Exception as exc:  # noqa: BLE001
            self._drop_image("invalid", str(exc))
            return
        if self._check_stamp(stamp_ns):
            self._enqueue(stamp_ns, msg.header.frame_id, msg, conv.compressed_image_to_array)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            intr = conv.camera_info_to_intrinsics(msg)
        except Exception as exc:  # noqa: BLE001
            self._count("camera_info_invalid")
            self._warn("camera_info", f"camera_info dropped: {exc}")
            return
        if self.intrinsics is None:
            self.intrinsics = intr
            self.get_logger().info(f"camera: {intr['model']} {intr['width']}x{intr['height']} fx={intr['fx']:.1f}")
            if not self.camera_frame and msg.header.frame_id:
                self.camera_frame = msg.header.frame_id
                self._resolve_extrinsic()

    def _add_odom(self, stamp, frame_id: str, pose) -> None:
        try:
            stamp_ns = conv.stamp_to_ns(stamp)
            T = conv.pose_msg_to_matrix(pose)
        except Exception as exc:  # noqa: BLE001
            self._count("odom_invalid")
            self._warn("odom_invalid", f"odometry dropped: {exc}")
            return
        if frame_id and frame_id != self.odom_frame:
            self._count("odom_wrong_frame")
            self._warn("odom_frame", f"odometry in frame {frame_id!r}, expected {self.odom_frame!r}: dropped")
            return
        if not self.odom.add(stamp_ns, T):
            self._count("odom_stamp_backwards")
            self._warn("odom_backwards", "odometry stamp went backwards: dropped")
            return
        self._count("odom_received")
        self._latest_odom_ns = stamp_ns
        self._last_odom_wall = time.monotonic()

    def _on_odometry(self, msg: Odometry) -> None:
        self._add_odom(msg.header.stamp, msg.header.frame_id, msg.pose.pose)

    def _on_pose_stamped(self, msg: PoseStamped) -> None:
        self._add_odom(msg.header.stamp, msg.header.frame_id, msg.pose)

    def _on_tf_static(self, msg: TFMessage) -> None:
        for t in msg.transforms:
            try:
                T = conv.transform_msg_to_matrix(t.transform)
            except Exception as exc:  # noqa: BLE001
                self._count("tf_invalid")
                self._warn("tf_invalid", f"tf_static entry dropped: {exc}")
                continue
            self._static_edges[t.child_frame_id] = (t.header.frame_id, T)
        self._resolve_extrinsic()

    def _resolve_extrinsic(self) -> None:
        cam = self.camera_frame
        if not cam:
            return
        T = np.eye(4)
        frame, seen = cam, set()
        while frame != self.base_frame:
            if frame in seen or frame not in self._static_edges:
                return
            seen.add(frame)
            parent, T_pc = self._static_edges[frame]
            T = T_pc @ T
            frame = parent
        if self.T_base_cam_tf is None:
            self.get_logger().info(f"extrinsic {self.base_frame}->{cam} from /tf_static: t={T[:3, 3].round(3).tolist()}")
        self.T_base_cam_tf = T

    # ------------------------------------------------------------------------------------------------ keyframes
    def _keyframe_loop(self) -> None:
        while not self._stop.is_set():
            with self._queue_cv:
                if not self._queue:
                    self._queue_cv.wait(0.05)
                items = list(self._queue)
            if not items:
                continue
            for item in items:
                if self._stop.is_set():
                    return
                done = self._process_image(*item)
                if not done:
                    break  # waiting for odometry: later images wait too (time order)
                with self._queue_cv:
                    if self._queue and self._queue[0] is item:
                        self._queue.popleft()
            else:
                continue
            time.sleep(0.01)

    def _process_image(self, stamp_ns, frame_id, msg, decoder, t_enq) -> bool:
        """Returns False when the image must wait (odometry not yet past its stamp), True when handled."""
        try:
            if self.intrinsics is None:
                if time.monotonic() - t_enq < float(self._p("sync_wait_s")):
                    return False  # its CameraInfo (same stamp) may simply come right after the image
                self._drop_image("no_camera_info")
                return True
            if not self.camera_frame and frame_id:
                self.camera_frame = frame_id
                self._resolve_extrinsic()
            T_base_cam = self._camera_extrinsic()
            if T_base_cam is None:
                return False  # waiting (at most tf_wait_s after the first image) for /tf_static
            T_odom_base, reason = self.odom.pose_at(stamp_ns, count=False)
            if T_odom_base is None:
                # Odometry not yet past the image: wait while odometry is still flowing (a busy executor may deliver
                # it late), but give up sync_wait_s after both the image and the newest odometry arrived.
                waited = time.monotonic() - max(t_enq, self._last_odom_wall)
                if reason in (AFTER_BUFFER, EMPTY) and waited < float(self._p("sync_wait_s")):
                    return False
                self.odom.counts[reason] += 1
                self._drop_image("no_pose_" + reason)
                return True
            image = decoder(msg)
            intr = self.intrinsics
            if image.shape[1] != intr["width"] or image.shape[0] != intr["height"]:
                self._drop_image("size_mismatch", f"{image.shape[1]}x{image.shape[0]} != camera_info "
                                                  f"{intr['width']}x{intr['height']}")
                return True
            T_odom_cam = T_odom_base @ T_base_cam
            ok, why = self.selector.consider(image, T_odom_cam, stamp_ns)
            self._count("keyframe_" + why)
            if ok:
                self._add_keyframe(image, T_odom_cam, T_odom_base, stamp_ns)
        except ValueError as exc:
            self._drop_image("invalid", str(exc))
        except Exception as exc:  # noqa: BLE001 - never let the worker die
            self._drop_image("error", repr(exc))
        return True

    def _camera_for(self, c2w_gl: np.ndarray, factor: float):
        from nerf_mapping.cameras import Cameras

        it = self.intrinsics
        w, h = it["width"], it["height"]
        cam = Cameras.create(c2w_gl, it["fx"], it["fy"], it["cx"], it["cy"], w, h, it["distortion"], it["model"])
        return cam if factor == 1.0 else cam.scaled(factor)

    def _add_keyframe(self, image: np.ndarray, T_odom_cam, T_odom_base, stamp_ns: int) -> None:
        """Add a keyframe: at its raw odometry pose with the drift spline (its extrapolation is the drift estimate),
        else at its odometry pose corrected by the current drift estimate (identity while refinement is off)."""
        from nerf_mapping.training.keyframes import downscale_factor, downscale_image

        k = downscale_factor(image.shape[1], self.kf_cfg.max_width)
        small = downscale_image(image, k)
        with self._state_lock:
            tr = self.trainer
            # with the drift spline, a new keyframe enters at its raw odometry pose: the spline's knots continue the
            # last drift estimate past the newest keyframe, so applying it here as well would count it twice
            T_map_odom = np.eye(4) if tr.pose.drift_enabled else self._drift_estimate(tr)
            cam = self._camera_for(conv.optical_pose_to_model_c2w(drift.apply_drift(T_map_odom, T_odom_cam)), 1.0 / k)
            # exact sizes after the integer crop
            cam.width[:] = small.shape[1]
            cam.height[:] = small.shape[0]
            # no trainer lock: a step samples before it sizes the pose parameters, so a frame added meanwhile is
            # sized but not trained until the next step (Trainer.step)
            fid = tr.frames.add(self._torch.from_numpy(small), cam, stamp=stamp_ns * 1e-9)
            live = set(tr.frames.frame_ids())
            kf = Keyframe(stamp_ns, T_odom_base, np.asarray(T_odom_cam, dtype=np.float64), T_map_odom)
            self.kf_info = {i: v for i, v in self.kf_info.items() if i in live}
            self.kf_info[fid] = kf
            self.kf_history.append((fid, kf))
            self._latest_kf = fid

    # ------------------------------------------------------------------------------------------------ training
    def _training_loop(self) -> None:
        while not self._stop.is_set():
            tr = self.trainer
            max_steps = int(self._p("training.max_steps"))
            budget = float(self._p("training.time_budget_s"))
            if len(tr.frames) == 0 or (max_steps and tr.step_count >= max_steps):
                self._train_active = False
                time.sleep(0.05)
                continue
            if self._train_t0 is None:
                self._train_t0 = time.monotonic()
            el = time.monotonic() - self._train_t0
            if budget > 0:
                tr.progress = min(el / budget, 1.0)
                if el >= budget:
                    self._train_active = False
                    time.sleep(0.05)
                    continue
            self._train_active = True
            # Ingestion before training: a backlog means the keyframe worker and the DDS callbacks need the CPU
            # (and the GIL) more than one more step does. Yielding here never blocks a callback.
            backlog = len(self._queue)
            if backlog > 1:
                time.sleep(0.01 * min(backlog, 20))
            try:
                st = tr.step()
            except Exception as exc:  # noqa: BLE001 - keep the node alive, report and back off
                self.get_logger().error(f"training step failed: {exc!r}", throttle_duration_sec=5.0)
                time.sleep(0.5)
                continue
            self._rays_accum += st["n_rays"]
            if tr.pose.enabled:
                self._snapshot_pose(tr)
            now = time.monotonic()
            # not before the occupancy grid has been carved: a render through the all-occupied initial grid marches
            # every sample of every ray (tens of seconds on 2 cores), and it stretches the next render period 3x
            if now >= self._next_render and tr.step_count > max(tr.cfg.grid.warmup_steps, tr.cfg.grid.update_every):
                t0 = time.monotonic()
                self._periodic_render()
                dur = time.monotonic() - t0
                self._next_render = time.monotonic() + max(self._render_period, 3.0 * dur)
        self._train_active = False

    def _periodic_render(self) -> None:
        with self._state_lock:
            fid = self._latest_kf
            if fid is None or fid not in self.kf_info:
                return
            stamp_ns = self.kf_info[fid].stamp_ns
            tr = self.trainer
            cam = tr.frames.camera(fid)
        try:
            w = int(cam.width[0])
            factor = min(1.0, self._render_width / w) if self._render_width > 0 else 1.0
            cams = cam.scaled(factor) if factor != 1.0 else cam
            c2w = self._refined_c2w(tr, fid, cams.c2w[0])
            out = tr.render(cams, 0, c2w=c2w, chunk=RENDER_CHUNK)
            rgb = (out["rgb"].clamp(0, 1) * 255.0 + 0.5).to(self._torch.uint8).numpy()
            frame = self.camera_frame or "camera"
            self._publish(self.pub_rendered, conv.array_to_image_msg(rgb, stamp_ns, frame, "rgb8"))
        except Exception as exc:  # noqa: BLE001
            if self.context.ok() and not self._stop.is_set():  # else: shutting down
                self.get_logger().error(f"periodic render failed: {exc!r}", throttle_duration_sec=5.0)

    # ------------------------------------------------------------------------------------------------ poses
    def _refined_c2w(self, tr, fid: int, c2w):
        """Model c2w of keyframe ``fid`` after pose refinement (identity correction when refinement is off)."""
        if not tr.pose.enabled or fid >= tr.pose.params.shape[0]:
            return c2w
        with self._torch.no_grad():
            return tr.pose(c2w[None], self._torch.tensor([fid]))[0]

    def _snapshot_pose(self, tr):
        """[F,3,4] float64 camera-frame corrections of every frame id of ``tr`` (None when refinement is off), read
        under the trainer lock (the training thread updates and grows the parameters inside its steps)."""
        if not tr.pose.enabled:
            return None
        with tr.lock, self._torch.no_grad():
            d = tr.pose.all_deltas().detach().double().numpy().copy()
        self._pose_snap = (tr, d)
        return d

    def _pose_deltas(self, tr):
        """The latest corrections snapshot of ``tr`` (taken now when there is none, e.g. right after LoadMap)."""
        if not tr.pose.enabled:
            return None
        snap = self._pose_snap
        if snap is not None and snap[0] is tr:
            return snap[1]
        return self._snapshot_pose(tr)

    def _implied_map_odom(self, tr, entries) -> dict[int, np.ndarray]:
        """T_map_odom implied by each keyframe of ``entries`` [(frame id, Keyframe)]: its refined map pose times the
        inverse of its RAW odometry camera pose. A keyframe the trainer has not seen yet implies the drift estimate
        it was inserted with."""
        from nerf_mapping.training.pose_correction import apply_deltas

        torch = self._torch
        d = self._pose_deltas(tr)
        out: dict[int, np.ndarray] = {}
        todo = []
        for fid, kf in entries:
            if d is None or fid >= d.shape[0]:
                out[fid] = kf.T_map_odom
            else:
                todo.append((fid, kf))
        if todo:
            c2w = np.stack([conv.optical_pose_to_model_c2w(drift.apply_drift(kf.T_map_odom, kf.T_odom_cam))
                            for _, kf in todo]).astype(np.float64)
            deltas = np.stack([d[fid] for fid, _ in todo])
            refined = apply_deltas(torch.from_numpy(c2w), torch.from_numpy(deltas)).numpy()
            for (fid, kf), r in zip(todo, refined):
                out[fid] = drift.implied_map_odom(conv.model_c2w_to_optical_pose(r), kf.T_odom_cam)
        return out

    def _drift_estimate(self, tr) -> np.ndarray:
        """Current best T_map_odom: implied by the most recent keyframe (call with the state lock held)."""
        if not self.kf_history:
            return np.eye(4)
        fid, kf = self.kf_history[-1]
        return drift.drift_estimate(self._implied_map_odom(tr, [(fid, kf)]), [fid])

    def pose_state(self):
        """The single source of refined poses: (odom path [(stamp, T_odom_base)], refined path
        [(stamp, T_map_base)], T_map_odom 4x4). map->odom comes from the latest keyframe's correction; each
        keyframe of the refined path is moved by its own implied map->odom."""
        with self._state_lock:
            hist = list(self.kf_history)
            tr = self.trainer
        odom_path = [(kf.stamp_ns, kf.T_odom_base) for _, kf in hist]
        corrections = self._implied_map_odom(tr, hist)
        T_map_odom = drift.drift_estimate(corrections, [fid for fid, _ in hist])
        refined_path = drift.refined_path([(fid, kf.stamp_ns, kf.T_odom_base) for fid, kf in hist], corrections,
                                          T_map_odom)
        return odom_path, refined_path, T_map_odom

    # ------------------------------------------------------------------------------------------------ publishing
    def _publish_status(self) -> None:
        try:
            tr = self.trainer
            now = time.monotonic()
            dt = now - self._rays_t
            if dt > 0:
                self._rays_per_second = self._rays_accum / dt
            self._rays_accum, self._rays_t = 0.0, now
            st = tr.last_stats or {}
            msg = MapStatus()
            msg.header.stamp = self.get_clock().now().to_msg()
            msg.header.frame_id = self.map_frame
            msg.keyframes = len(tr.frames)
            msg.images_received = self.images_received & 0xFFFFFFFF
            msg.images_dropped = self.images_dropped & 0xFFFFFFFF
            msg.steps = int(tr.step_count)
            msg.loss = float(st.get("loss", 0.0))
            msg.psnr = float(st.get("psnr", 0.0))
            msg.rays_per_second = float(self._rays_per_second)
            deltas = self._pose_deltas(tr)
            if deltas is not None:
                ids = [i for i in list(self.kf_info) if i < deltas.shape[0]]
                if ids:
                    d = deltas[ids]  # [K,3,4] learned camera-frame corrections of the live keyframes
                    cos = np.clip((d[:, 0, 0] + d[:, 1, 1] + d[:, 2, 2] - 1.0) * 0.5, -1.0, 1.0)
                    msg.pose_correction_rot_deg = float(np.degrees(np.arccos(cos)).mean())
                    msg.pose_correction_trans = float(np.linalg.norm(d[:, :, 3], axis=-1).mean())
            msg.training = bool(self._train_active)
            self._publish(self.pub_status, msg)
            with self._counts_lock:
                stats = dict(self.counts)
            stats.update({"images_received": self.images_received, "images_dropped": self.images_dropped,
                          "queue": len(self._queue), "keyframes": len(tr.frames)})
            self._publish(self.pub_stats, String(data=json.dumps(stats, sort_keys=True)))
            odom_path, refined_path, _ = self.pose_state()
            if odom_path:
                self._publish(self.pub_path_odom, conv.path_msg([T for _, T in odom_path], [s for s, _ in odom_path],
                                                         self.odom_frame))
                self._publish(self.pub_path_refined, conv.path_msg([T for _, T in refined_path],
                                                            [s for s, _ in refined_path], self.map_frame))
        except Exception as exc:  # noqa: BLE001
            if self.context.ok() and not self._stop.is_set():  # else: shutting down
                self.get_logger().error(f"status publishing failed: {exc!r}", throttle_duration_sec=5.0)

    def _publish_tf(self) -> None:
        try:
            with self._state_lock:
                T_map_odom = self._drift_estimate(self.trainer)
            stamp = self._latest_odom_ns or self.get_clock().now().nanoseconds
            self._publish(self.pub_tf, TFMessage(transforms=[conv.transform_stamped(T_map_odom, stamp, self.map_frame,
                                                                             self.odom_frame)]))
        except Exception as exc:  # noqa: BLE001
            if self.context.ok() and not self._stop.is_set():  # else: shutting down
                self.get_logger().error(f"tf publishing failed: {exc!r}", throttle_duration_sec=5.0)

    # ------------------------------------------------------------------------------------------------ services
    def _srv_render_view(self, req: RenderView.Request, res: RenderView.Response) -> RenderView.Response:
        try:
            T = conv.pose_msg_to_matrix(req.pose)
            lim = int(self._p("render_max_size"))
            it = self.intrinsics or {"fx": 0.0, "width": 0, "height": 0}
            w = int(req.width) or int(it["width"] and min(it["width"], self.kf_cfg.max_width)) or 160
            h = int(req.height) or (round(w * it["height"] / it["width"]) if it["width"] else round(w * 0.75))
            if not (8 <= w <= lim and 8 <= h <= lim):
                raise ValueError(f"width/height must be within 8..{lim}, got {w}x{h}")
            from nerf_mapping.cameras import Cameras

            c2w = conv.optical_pose_to_model_c2w(T)
            if self.intrinsics is not None:
                sx, sy = w / it["width"], h / it["height"]
                cam = Cameras.create(c2w, it["fx"] * sx, it["fy"] * sy, it["cx"] * sx, it["cy"] * sy, w, h)
            else:
                f = 0.5 * w / math.tan(math.radians(30.0))  # 60 degree horizontal field of view
                cam = Cameras.create(c2w, f, f, w / 2, h / 2, w, h)
            out = self.trainer.render(cam, 0, chunk=RENDER_CHUNK)
            rgb = (out["rgb"].clamp(0, 1) * 255.0 + 0.5).to(self._torch.uint8).numpy()
            stamp = self.get_clock().now().to_msg()
            frame = self.camera_frame or "camera"
            res.rgb = conv.array_to_image_msg(rgb, stamp, frame, "rgb8")
            res.depth = conv.depth_array_to_image_msg(out["depth"].numpy(), stamp, frame)
            res.success, res.message = True, f"rendered {w}x{h}"
        except Exception as exc:  # noqa: BLE001
            res.success, res.message = False, f"render_view failed: {exc}"
        return res

    def _srv_save_map(self, req: SaveMap.Request, res: SaveMap.Response) -> SaveMap.Response:
        try:
            path = safe_output_path(self.output_dir, req.filename, time.strftime("map_%Y%m%d_%H%M%S"), MAP_SUFFIX)
            with self._state_lock:
                tr = self.trainer
                extra = self._keyframe_extra(tr)
                tr.save(path, extra=extra)
            res.success, res.message, res.path = True, f"saved {len(tr.frames)} keyframes, step {tr.step_count}", \
                str(path)
        except Exception as exc:  # noqa: BLE001
            res.success, res.message = False, f"save_map failed: {exc}"
        return res

    def _keyframe_extra(self, tr) -> dict:
        torch = self._torch
        ids = tr.frames.frame_ids()
        extra = {"node": NODE_NAME, "map_frame": self.map_frame, "odom_frame": self.odom_frame}
        if ids:
            extra["keyframe_ids"] = torch.tensor(ids, dtype=torch.int64)
            cams = [tr.frames.camera(i) for i in ids]
            extra["keyframe_stamps_ns"] = torch.tensor([self.kf_info[i].stamp_ns if i in self.kf_info else 0
                                                        for i in ids], dtype=torch.int64)
            extra["keyframe_odom_base"] = torch.tensor(np.stack([self.kf_info[i].T_odom_base if i in self.kf_info
                                                                 else np.eye(4) for i in ids]), dtype=torch.float64)
            # raw odometry camera poses (the frame store's c2w also holds the drift correction applied at insertion)
            extra["keyframe_odom_cam"] = torch.tensor(np.stack(
                [self.kf_info[i].T_odom_cam if i in self.kf_info else conv.model_c2w_to_optical_pose(c.c2w[0].numpy())
                 for i, c in zip(ids, cams)]), dtype=torch.float64)
            extra["keyframe_c2w"] = torch.cat([c.c2w for c in cams])
            extra["keyframe_intrinsics"] = torch.stack(
                [torch.cat([c.fx, c.fy, c.cx, c.cy, c.width.float(), c.height.float(), c.model.float()]) for c in cams])
            extra["keyframe_distortion"] = torch.cat([c.distortion for c in cams])
            extra["keyframe_images"] = [tr.frames.image(i) for i in ids]
        return extra

    def _srv_load_map(self, req: LoadMap.Request, res: LoadMap.Response) -> LoadMap.Response:
        try:
            path = safe_output_path(self.output_dir, req.filename, "map", MAP_SUFFIX)
            if not path.is_file():
                raise FileNotFoundError(f"no map file {path.name} in the output directory")
            self._load_map(path)
            res.success, res.message, res.path = True, f"loaded {len(self.trainer.frames)} keyframes", str(path)
        except Exception as exc:  # noqa: BLE001
            res.success, res.message = False, f"load_map failed: {exc}"
        return res

    def _load_map(self, path: Path) -> None:
        from nerf_mapping.cameras import Cameras
        from nerf_mapping.training.frame_store import FrameStore
        from nerf_mapping.training.trainer import Trainer

        torch = self._torch
        st = torch.load(path, map_location="cpu", weights_only=True)  # validated again by Trainer.load
        extra = st.get("extra", {}) if isinstance(st, dict) else {}
        frames = FrameStore(capacity=self.kf_cfg.capacity)
        old_ids: list[int] = []
        info: dict[int, Keyframe] = {}
        if "keyframe_ids" in extra:
            ids = extra["keyframe_ids"].tolist()
            for j, old in enumerate(ids):
                k = extra["keyframe_intrinsics"][j]
                cam = Cameras.create(extra["keyframe_c2w"][j], k[0], k[1], k[2], k[3], int(k[4]), int(k[5]),
                                     extra["keyframe_distortion"][j], int(k[6]))
                stamp_ns = int(extra["keyframe_stamps_ns"][j])
                fid = frames.add(extra["keyframe_images"][j], cam, stamp=stamp_ns * 1e-9 if stamp_ns else None)
                old_ids.append(int(old))
                T_map_cam = conv.model_c2w_to_optical_pose(extra["keyframe_c2w"][j].double().numpy())
                # maps saved before drift-corrected insertion: the stored pose is the raw odometry pose
                T_odom_cam = extra["keyframe_odom_cam"][j].numpy() if "keyframe_odom_cam" in extra else T_map_cam
                info[fid] = Keyframe(stamp_ns, extra["keyframe_odom_base"][j].numpy(),
                                     T_odom_cam, drift.implied_map_odom(T_map_cam, T_odom_cam))
        tr = Trainer.load(path, frames=frames)
        if old_ids and tr.pose.params.shape[0] > max(old_ids):
            tr.pose.select(old_ids)  # params, preconditioners and their flags, renumbered like the frame store
            tr.pose_optimizer = tr.pose.make_optimizer()
        with self._state_lock:
            self.trainer = tr
            self.kf_info = info
            self.kf_history = deque(sorted(info.items()), maxlen=20000)
            self._latest_kf = max(info) if info else None
            self._train_t0 = None

    def _srv_export_mesh(self, req: ExportMesh.Request, res: ExportMesh.Response) -> ExportMesh.Response:
        try:
            safe_output_path(self.output_dir, req.filename, "mesh.ply", "")
            res.success, res.message = False, "not implemented yet: mesh extraction arrives with the mesh export issue"
        except Exception as exc:  # noqa: BLE001
            res.success, res.message = False, f"export_mesh failed: {exc}"
        return res

    def _srv_query_segmentation(self, req: QuerySegmentation.Request,
                                res: QuerySegmentation.Response) -> QuerySegmentation.Response:
        t0 = time.perf_counter()
        if not str(req.text).strip():
            res.success, res.message = False, "empty text query"
        elif not math.isfinite(req.threshold) or not 0.0 <= req.threshold <= 1.0:
            res.success, res.message = False, "threshold must be in [0, 1]"
        else:
            res.success, res.message = False, "not implemented yet: the language field arrives with the " \
                                              "segmentation issue"
        res.seconds = float(time.perf_counter() - t0)
        return res

    # ------------------------------------------------------------------------------------------------ shutdown
    def shutdown(self) -> None:
        self._stop.set()
        with self._queue_cv:
            self._queue_cv.notify_all()
        for t in (self._worker, self._trainer_thread):
            if t.is_alive():
                t.join(timeout=10.0)
        self._service_pool.shutdown(wait=False, cancel_futures=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv if argv is None else [sys.argv[0], *argv]
    rclpy.init(args=args)
    node = None
    executor = SingleThreadedExecutor()  # services are offloaded coroutines: see the module docstring
    try:
        node = MapperNode()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.shutdown()
            executor.remove_node(node)
            node.destroy_node()
        executor.shutdown()
        if rclpy.ok():
            rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
