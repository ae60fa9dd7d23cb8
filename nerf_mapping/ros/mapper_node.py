"""``nerf_mapper``: the online mapping node, a thin ROS layer over :class:`nerf_mapping.mapping.mapper.OnlineMapper`.

The node owns parameters, QoS, subscriptions, message conversions, publishers and services; everything about mapping
(keyframes, odometry sync, the extrinsic from the static TF tree, training, drift, map files) is the mapper's.

Inputs (sensor QoS by default): camera images (raw or compressed) + CameraInfo, odometry (nav_msgs/Odometry or
geometry_msgs/PoseStamped), /tf_static for the base->camera extrinsic, and with ``semantics.teacher: labels`` per-pixel
class-id images (``semantics.label_topic``). Optional range sensors: depth images (``depth_topic``, 16UC1 mm or 32FC1 m,
aligned to the colour camera or with their own ``depth_info_topic``) and LiDAR clouds (``points_topic``, PointCloud2,
decoded on their own callback group, bounded to ``range_input.max_points_per_scan``), handed to
:class:`nerf_mapping.mapping.range_input.RangeInput`. Outputs: ``~/status`` (MapStatus),
``~/input_stats`` (std_msgs/String JSON with per-reason drop counters), ``~/rendered`` (periodic render at the latest
keyframe pose, stamped with that keyframe's stamp), ``~/path/odom`` + ``~/path/refined`` (nav_msgs/Path), ``/tf``
map->odom, ``~/mesh`` (MarkerArray of TRIANGLE_LIST, transient local: the last ExportMesh result),
``~/segmentation`` (PointCloud2 x y z rgb relevancy, transient local: the last QuerySegmentation result) and
``~/segmentation/image`` (that query's relevancy over the newest keyframe's view). Services
under ``~/``: render_view, save_map, load_map, export_mesh, query_segmentation (the last two on their own threads).
With ``viewer.port`` > 0 the node also serves the browser viewer (:mod:`nerf_mapping.viewer`: it calls the mapper
itself, as these services do, and shows their latest mesh and query cloud).

Threads: subscription callbacks only validate, convert and hand over to the mapper (whose keyframe worker decodes
images and whose training thread steps). The executor is single-threaded: rclpy's MultiThreadedExecutor with Fast
DDS re-reports a subscription as ready while a worker has not taken its message yet and spins the main thread at
100 % (~1500 wake-ups/s per 10-50 Hz topic, which starved training, cf. ros2/rclpy#1223). Services are coroutines
that hand their work to a service thread and await it, so a slow render or save never blocks message intake, and
they answer while training runs. Every input is validated; a bad message is counted and dropped, never fatal.

Run: ``python -m nerf_mapping.ros.mapper_node --ros-args --params-file config/mapper.yaml``.
"""
from __future__ import annotations

import json
import math
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data)
from rcl_interfaces.msg import ParameterDescriptor

from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry, Path as PathMsg
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import String
from tf2_msgs.msg import TFMessage
from visualization_msgs.msg import MarkerArray

from nerf_mapping_interfaces.msg import MapStatus
from nerf_mapping_interfaces.srv import ExportMesh, LoadMap, QuerySegmentation, RenderView, SaveMap

from nerf_mapping.export.paths import safe_output_path
from nerf_mapping.mapping.cpu import CpuMeter
from nerf_mapping.mapping.map_io import MAP_SUFFIX
from nerf_mapping.mapping.mapper import OnlineMapper
from nerf_mapping.ros import conversions as conv
from nerf_mapping.ros.params import NODE_NAME, RENAMED, mapper_config, node_config, parameters

CPU_FILE = "cpu_threads.json"
"""Written into ``output_dir`` when the node stops: {thread name: average cores over the run}."""
IMAGE_ENCODINGS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


class MapperNode(Node):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        # every parameter comes from the config dataclasses (ros/params.py): name, default, type, description
        for p in parameters():
            self.declare_parameter(p.name, p.default, ParameterDescriptor(description=p.description,
                                                                          dynamic_typing=p.dynamic))
        self._warn_renamed()
        g = self._p
        self.cfg = nc = node_config(g)
        self.map_frame = nc.map_frame
        self.output_dir = Path(nc.output_dir).expanduser().resolve()
        self.pub_rendered = self.create_publisher(Image, "~/rendered", 2)
        self.mapper = OnlineMapper(mapper_config(g, str(self.output_dir)), logger=self.get_logger(),
                                   on_render=self._publish_render)
        self.odom_frame = self.mapper.cfg.odom_frame

        # --- QoS and callback groups
        if nc.sensor_qos not in ("sensor_data", "reliable"):
            raise ValueError("sensor_qos must be sensor_data or reliable")
        rel = qos_profile_sensor_data.reliability if nc.sensor_qos == "sensor_data" else \
            ReliabilityPolicy.RELIABLE
        # SensorData semantics (best effort, volatile) with deeper reader histories than its depth 5 (images: 5 s at
        # 10 Hz), so a busy executor does not lose samples (50 Hz odometry would otherwise overflow within 0.1 s)
        sensor_qos = QoSProfile(depth=50, reliability=rel, history=HistoryPolicy.KEEP_LAST)
        odom_qos = QoSProfile(depth=200, reliability=rel, history=HistoryPolicy.KEEP_LAST)
        static_qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                                durability=DurabilityPolicy.TRANSIENT_LOCAL, history=HistoryPolicy.KEEP_LAST)
        cb_sensors, cb_odom = MutuallyExclusiveCallbackGroup(), MutuallyExclusiveCallbackGroup()
        cb_timers = MutuallyExclusiveCallbackGroup()
        cb_services = ReentrantCallbackGroup()  # a service coroutine awaiting its worker must not hold a group

        transport, topic = nc.image_transport, nc.image_topic
        if transport == "compressed":
            topic = topic if topic.endswith("/compressed") else topic.rstrip("/") + "/compressed"
            self.create_subscription(CompressedImage, topic, self._on_compressed, sensor_qos,
                                     callback_group=cb_sensors)
        elif transport == "raw":
            self.create_subscription(Image, topic, self._on_image, sensor_qos, callback_group=cb_sensors)
        else:
            raise ValueError("image_transport must be raw or compressed")
        self.create_subscription(CameraInfo, nc.camera_info_topic, self._on_camera_info, sensor_qos,
                                 callback_group=cb_sensors)
        otype = nc.odom_type
        if otype in ("nav_msgs/Odometry", "nav_msgs/msg/Odometry", "Odometry"):
            self.create_subscription(Odometry, nc.odom_topic, self._on_odometry, odom_qos,
                                     callback_group=cb_odom)
        elif otype in ("geometry_msgs/PoseStamped", "geometry_msgs/msg/PoseStamped", "PoseStamped"):
            self.create_subscription(PoseStamped, nc.odom_topic, self._on_pose_stamped, odom_qos,
                                     callback_group=cb_odom)
        else:
            raise ValueError("odom_type must be nav_msgs/Odometry or geometry_msgs/PoseStamped")
        if self.mapper.cfg.use_tf_static:
            self.create_subscription(TFMessage, nc.tf_static_topic, self._on_tf_static, static_qos,
                                     callback_group=cb_odom)
        if self.mapper.semantics.cfg.teacher == "labels":
            self.create_subscription(Image, nc.semantics.label_topic, self._on_labels, sensor_qos,
                                     callback_group=cb_sensors)
        rng = self.mapper.range_input
        if nc.depth_topic:
            rng.expect_depth = True
            self.create_subscription(Image, nc.depth_topic, self._on_depth, sensor_qos, callback_group=cb_sensors)
            if nc.depth_info_topic:
                self.create_subscription(CameraInfo, nc.depth_info_topic, self._on_depth_info, sensor_qos,
                                         callback_group=cb_sensors)
        if nc.points_topic:
            rng.expect_points = True
            # its own group: decoding a large cloud must not delay the images
            self.create_subscription(PointCloud2, nc.points_topic, self._on_points, sensor_qos,
                                     callback_group=MutuallyExclusiveCallbackGroup())
        inputs = ["rgb"] + (["depth"] if nc.depth_topic else []) + (["lidar"] if nc.points_topic else [])
        self.get_logger().info(f"inputs: {'+'.join(inputs)}")

        # --- publishers
        self.pub_status = self.create_publisher(MapStatus, "~/status", 10)
        self.pub_stats = self.create_publisher(String, "~/input_stats", 10)
        self.pub_path_odom = self.create_publisher(PathMsg, "~/path/odom", 2)
        self.pub_path_refined = self.create_publisher(PathMsg, "~/path/refined", 2)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL, history=HistoryPolicy.KEEP_LAST)
        self.pub_mesh = self.create_publisher(MarkerArray, "~/mesh", latched)  # RViz started later still gets it
        self.pub_seg = self.create_publisher(PointCloud2, "~/segmentation", latched)  # the last query's result
        self.pub_seg_image = self.create_publisher(Image, "~/segmentation/image", latched)  # ... seen from a keyframe
        self.pub_tf = self.create_publisher(TFMessage, "/tf", 10) if nc.publish_tf else None

        # --- services
        self._service_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nerf_mapper_service")
        # exports take seconds: their own thread, so renders and saves are not queued behind them
        self._export_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nerf_mapper_export")
        # queries too (the first one of a map computes the candidate points: seconds)
        self._query_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nerf_mapper_query")
        self._picture_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nerf_mapper_picture")
        self._picture_busy = False
        for srv_type, name, fn in ((RenderView, "~/render_view", self._srv_render_view),
                                   (SaveMap, "~/save_map", self._srv_save_map),
                                   (LoadMap, "~/load_map", self._srv_load_map)):
            self.create_service(srv_type, name, self._offloaded(fn), callback_group=cb_services)
        self.create_service(QuerySegmentation, "~/query_segmentation",
                            self._offloaded(self._srv_query_segmentation, self._query_pool), callback_group=cb_services)
        self.create_service(ExportMesh, "~/export_mesh",
                            self._offloaded(self._srv_export_mesh, self._export_pool, exclusive=True),
                            callback_group=cb_services)

        # --- timers and threads
        self.cpu = CpuMeter()  # CPU time per thread, sampled with the status; written to cpu_threads.json at the end
        self.create_timer(nc.status_period_s, self._publish_status, callback_group=cb_timers)
        if self.pub_tf is not None:
            self.create_timer(nc.tf_period_s, self._publish_tf, callback_group=cb_timers)
        self.mapper.start()
        self.get_logger().info(
            f"nerf_mapper: image {topic} ({transport}), odom {nc.odom_topic} ({otype}), scene_box "
            f"{self.mapper.cfg.scene_box}, output_dir {self.output_dir}, hash encoding "
            f"{self.mapper.trainer.field.encoding.impl}")
        self.viewer = self._start_viewer(nc)

    def _start_viewer(self, nc):
        """The browser viewer on ``viewer.port`` (None when 0, or when it cannot start: mapping goes on)."""
        if nc.viewer.port <= 0:
            return None
        try:
            from nerf_mapping.viewer.viewer import Viewer

            viewer = Viewer(self.mapper, nc.viewer, output_dir=self.output_dir, log=self.get_logger(),
                            save_meta={"node": NODE_NAME, "map_frame": self.map_frame, "odom_frame": self.odom_frame},
                            on_mesh=self._publish_mesh, label=NODE_NAME)
            self.get_logger().info(f"viewer: {viewer.start()}")
            return viewer
        except Exception as exc:  # noqa: BLE001 - no viewer (viser missing, bad host): the node maps without it
            self.get_logger().error(f"viewer not started: {exc!r}")
            return None

    # ------------------------------------------------------------------------------------------------ helpers
    def _p(self, name):
        return self.get_parameter(name).value

    def _warn_renamed(self) -> None:
        """A parameter file or ``-p`` that sets a name of an earlier release: ROS would ignore it silently."""
        given = set(getattr(self, "_parameter_overrides", {}) or {})
        for old, new in RENAMED.items():
            if old in given:
                self.get_logger().error(f"parameter {old!r} was renamed {new!r}: its value is ignored; "
                                        f"set {new} instead")

    def _publish(self, pub, msg) -> None:
        """Publish unless the context is shutting down (the mapper's threads may outlive the executor briefly)."""
        if self.mapper.stopping or not self.context.ok():
            return
        pub.publish(msg)

    def _report(self, what: str, exc: Exception) -> None:
        if self.context.ok() and not self.mapper.stopping:  # else: shutting down
            self.get_logger().error(f"{what} failed: {exc!r}", throttle_duration_sec=5.0)

    def _offloaded(self, fn, pool: ThreadPoolExecutor | None = None, exclusive: bool = False):
        """Service callback that runs ``fn(request, response)`` on a service thread (``pool``, default the shared
        one) and awaits it: the executor (single-threaded, see the module docstring) keeps taking messages
        meanwhile. Requests are served one at a time, in arrival order; with ``exclusive`` a request that arrives
        while another is running is refused at once (success false) instead of queued."""
        from rclpy.task import Future

        pool = pool or self._service_pool
        running = [0]  # only touched by the executor thread

        async def callback(request, response):
            if exclusive and running[0]:
                response.success = False
                response.message = (f"busy: a {getattr(fn, '__name__', 'request').removeprefix('_srv_')} request is "
                                    "running; call again when it has finished")
                return response
            running[0] += 1
            try:
                return await run_offloaded(request, response)
            finally:
                running[0] -= 1

        async def run_offloaded(request, response):
            fut = Future(executor=self.executor)

            def run():
                try:
                    fut.set_result(fn(request, response))
                except BaseException as exc:  # noqa: BLE001 - the _srv_* functions answer errors themselves
                    fut.set_exception(exc)

            pool.submit(run)
            try:
                return await fut
            except Exception as exc:  # noqa: BLE001 - a failed request is answered, never fatal to the executor
                self.get_logger().error(f"service {getattr(fn, '__name__', fn)} failed: {exc!r}")
                if hasattr(response, "success"):
                    response.success, response.message = False, f"failed: {exc!r}"
                return response

        return callback

    # ------------------------------------------------------------------------------------------------ callbacks
    def _on_image(self, msg: Image) -> None:
        try:
            stamp_ns = conv.stamp_to_ns(msg.header.stamp)
            # validate header fields now (cheap); pixels are converted by the mapper's worker
            enc = str(msg.encoding).lower()
            if enc not in IMAGE_ENCODINGS:
                raise ValueError(f"unsupported image encoding {msg.encoding!r}")
            c = IMAGE_ENCODINGS[enc]
            if int(msg.step) < int(msg.width) * c or len(msg.data) != int(msg.step) * int(msg.height):
                raise ValueError(f"step/size mismatch: step {msg.step}, width {msg.width}x{c}, height {msg.height}, "
                                 f"data {len(msg.data)} bytes")
        except Exception as exc:  # noqa: BLE001 - any malformed message is dropped, never fatal
            self.mapper.intake.reject_image("invalid", str(exc))
            return
        self.mapper.intake.submit_image(stamp_ns, msg.header.frame_id, msg, conv.image_msg_to_array)

    def _on_compressed(self, msg: CompressedImage) -> None:
        try:
            stamp_ns = conv.stamp_to_ns(msg.header.stamp)
            if not len(msg.data):
                raise ValueError("empty compressed image")
        except Exception as exc:  # noqa: BLE001
            self.mapper.intake.reject_image("invalid", str(exc))
            return
        self.mapper.intake.submit_image(stamp_ns, msg.header.frame_id, msg, conv.compressed_image_to_array)

    def _on_labels(self, msg: Image) -> None:
        try:
            stamp_ns = conv.stamp_to_ns(msg.header.stamp)
            labels = conv.label_msg_to_array(msg)
        except Exception as exc:  # noqa: BLE001 - dropped and counted, never fatal
            self.mapper.intake.count("labels_invalid", f"label image dropped: {exc}")
            return
        self.mapper.intake.count("labels_received")
        self.mapper.semantics.add_labels(stamp_ns, labels)

    def _on_depth(self, msg: Image) -> None:
        try:
            stamp_ns = conv.stamp_to_ns(msg.header.stamp)
            depth = conv.depth_msg_to_array(msg)
        except Exception as exc:  # noqa: BLE001 - dropped and counted, never fatal
            self.mapper.intake.count("depth_invalid", f"depth image dropped: {exc}")
            return
        self.mapper.range_input.add_depth(stamp_ns, msg.header.frame_id, depth)

    def _on_depth_info(self, msg: CameraInfo) -> None:
        try:
            intr = conv.camera_info_to_intrinsics(msg)
        except Exception as exc:  # noqa: BLE001
            self.mapper.intake.count("depth_info_invalid", f"depth camera_info dropped: {exc}")
            return
        self.mapper.range_input.set_depth_intrinsics(intr, msg.header.frame_id)

    def _on_points(self, msg: PointCloud2) -> None:
        try:
            stamp_ns = conv.stamp_to_ns(msg.header.stamp)
            xyz, times = conv.pointcloud_msg_to_arrays(msg, max_points=self.mapper.cfg.range_input.max_points_per_scan,
                                                       seed=stamp_ns & 0xFFFF)
        except Exception as exc:  # noqa: BLE001 - dropped and counted, never fatal
            self.mapper.intake.count("points_invalid", f"point cloud dropped: {exc}")
            return
        self.mapper.range_input.add_points(stamp_ns, msg.header.frame_id, xyz, times)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            intr = conv.camera_info_to_intrinsics(msg)
        except Exception as exc:  # noqa: BLE001
            self.mapper.intake.count("camera_info_invalid", f"camera_info dropped: {exc}")
            return
        self.mapper.intake.set_intrinsics(intr, msg.header.frame_id)

    def _add_odom(self, stamp, frame_id: str, pose) -> None:
        try:
            stamp_ns = conv.stamp_to_ns(stamp)
            T = conv.pose_msg_to_matrix(pose)
        except Exception as exc:  # noqa: BLE001
            self.mapper.intake.count("odom_invalid", f"odometry dropped: {exc}")
            return
        self.mapper.intake.add_odometry(stamp_ns, frame_id, T)

    def _on_odometry(self, msg: Odometry) -> None:
        self._add_odom(msg.header.stamp, msg.header.frame_id, msg.pose.pose)

    def _on_pose_stamped(self, msg: PoseStamped) -> None:
        self._add_odom(msg.header.stamp, msg.header.frame_id, msg.pose)

    def _on_tf_static(self, msg: TFMessage) -> None:
        for t in msg.transforms:
            try:
                T = conv.transform_msg_to_matrix(t.transform)
            except Exception as exc:  # noqa: BLE001
                self.mapper.intake.count("tf_invalid", f"tf_static entry dropped: {exc}")
                continue
            self.mapper.intake.add_static_transform(t.header.frame_id, t.child_frame_id, T)

    # ------------------------------------------------------------------------------------------------ publishing
    def _camera_frame(self) -> str:
        return self.mapper.intake.camera_frame or "camera"

    def _publish_render(self, rgb, stamp_ns: int) -> None:
        self._publish(self.pub_rendered, conv.array_to_image_msg(rgb, stamp_ns, self._camera_frame(), "rgb8"))

    def _publish_status(self) -> None:
        try:
            st = self.mapper.status()
            msg = MapStatus()
            msg.header.stamp = self.get_clock().now().to_msg()
            msg.header.frame_id = self.map_frame
            msg.keyframes = st["keyframes"]
            msg.images_received = st["images_received"] & 0xFFFFFFFF
            msg.images_dropped = st["images_dropped"] & 0xFFFFFFFF
            msg.steps, msg.loss, msg.psnr = st["steps"], st["loss"], st["psnr"]
            msg.rays_per_second = st["rays_per_second"]
            msg.pose_correction_rot_deg = st["pose_correction_rot_deg"]
            msg.pose_correction_trans = st["pose_correction_trans"]
            msg.training = st["training"]
            self._publish(self.pub_status, msg)
            self._publish(self.pub_stats, String(data=json.dumps(self.mapper.input_stats(), sort_keys=True)))
            self.cpu.sample()
            odom_path, refined_path, _ = self.mapper.pose_state()
            if odom_path:
                self._publish(self.pub_path_odom, conv.path_msg([T for _, T in odom_path], [s for s, _ in odom_path],
                                                                self.odom_frame))
                self._publish(self.pub_path_refined, conv.path_msg([T for _, T in refined_path],
                                                                   [s for s, _ in refined_path], self.map_frame))
        except Exception as exc:  # noqa: BLE001
            self._report("status publishing", exc)

    def _publish_tf(self) -> None:
        try:
            T_map_odom = self.mapper.drift_estimate()
            stamp = self.mapper.intake.latest_odom_ns or self.get_clock().now().nanoseconds
            self._publish(self.pub_tf, TFMessage(transforms=[conv.transform_stamped(T_map_odom, stamp, self.map_frame,
                                                                                    self.odom_frame)]))
        except Exception as exc:  # noqa: BLE001
            self._report("tf publishing", exc)

    # ------------------------------------------------------------------------------------------------ services
    def _srv_render_view(self, req: RenderView.Request, res: RenderView.Response) -> RenderView.Response:
        try:
            out = self.mapper.views.render_view(conv.pose_msg_to_matrix(req.pose), int(req.width), int(req.height),
                                                max_size=self.cfg.render_max_size)
            stamp = self.get_clock().now().to_msg()
            res.rgb = conv.array_to_image_msg(out["rgb"], stamp, self._camera_frame(), "rgb8")
            res.depth = conv.depth_array_to_image_msg(out["depth"], stamp, self._camera_frame())
            h, w = out["rgb"].shape[:2]
            rw, rh = out["rendered_size"]
            res.success, res.message = True, (f"rendered {w}x{h}" if (rw, rh) == (w, h) else
                                              f"rendered {rw}x{rh} (render_budget_s), upsampled to {w}x{h}")
        except Exception as exc:  # noqa: BLE001
            res.success, res.message = False, f"render_view failed: {exc}"
        return res

    def _srv_save_map(self, req: SaveMap.Request, res: SaveMap.Response) -> SaveMap.Response:
        try:
            path = safe_output_path(self.output_dir, req.filename, time.strftime("map_%Y%m%d_%H%M%S"), MAP_SUFFIX)
            r = self.mapper.save(path, meta={"node": NODE_NAME, "map_frame": self.map_frame,
                                             "odom_frame": self.odom_frame})
            res.success, res.message, res.path = True, f"saved {r['keyframes']} keyframes, step {r['steps']}", \
                str(path)
        except Exception as exc:  # noqa: BLE001
            res.success, res.message = False, f"save_map failed: {exc}"
        return res

    def _srv_load_map(self, req: LoadMap.Request, res: LoadMap.Response) -> LoadMap.Response:
        try:
            path = safe_output_path(self.output_dir, req.filename, "map", MAP_SUFFIX)
            if not path.is_file():
                raise FileNotFoundError(f"no map file {path.name} in the output directory")
            r = self.mapper.load(path)
            res.success, res.message, res.path = True, f"loaded {r['keyframes']} keyframes", str(path)
        except Exception as exc:  # noqa: BLE001
            res.success, res.message = False, f"load_map failed: {exc}"
        return res

    def _srv_export_mesh(self, req: ExportMesh.Request, res: ExportMesh.Response) -> ExportMesh.Response:
        try:
            depth = int(req.depth) if int(req.depth) > 0 else self.mapper.cfg.mesh.depth
            path = safe_output_path(self.output_dir, req.filename, time.strftime("mesh_%Y%m%d_%H%M%S"), ".ply")
            r = self.mapper.views.export_mesh(path, depth)
            t_pub = time.perf_counter()
            n_pub = self._publish_mesh(r.geometry)
            res.n_vertices, res.n_triangles, res.path = r.n_vertices, r.n_triangles, str(r.path)
            res.success = True
            res.message = (f"mesh: {r.n_triangles} triangles, {r.n_vertices} vertices from {r.n_points} points in "
                           f"{r.seconds['total']:.1f} s (depth {depth}); "
                           + (f"{n_pub} triangles on ~/mesh ({time.perf_counter() - t_pub:.1f} s)" if n_pub else
                              "not published (mesh.marker_max_triangles 0)"))
            self.get_logger().info(f"export_mesh: {res.message} -> {path}")
            if self.viewer is not None:
                self.viewer.show_mesh(r.geometry)
        except Exception as exc:  # noqa: BLE001
            res.success, res.message = False, f"export_mesh failed: {exc}"
        return res

    def _publish_mesh(self, mesh) -> int:
        """Publish ``mesh`` (Open3D, map frame) on ~/mesh, decimated to ``mesh.marker_max_triangles``; returns the
        triangles published."""
        import numpy as np

        cap = self.cfg.mesh.marker_max_triangles
        if cap <= 0:
            return 0
        if len(mesh.triangles) > cap:
            mesh = mesh.simplify_quadric_decimation(cap)
        colors = (np.asarray(mesh.vertex_colors) * 255.0 + 0.5).clip(0, 255).astype(np.uint8) \
            if mesh.has_vertex_colors() else None
        msg = conv.mesh_marker_array(np.asarray(mesh.vertices), np.asarray(mesh.triangles), colors,
                                     self.get_clock().now().to_msg(), self.map_frame)
        self._publish(self.pub_mesh, msg)
        return len(mesh.triangles)

    def _srv_query_segmentation(self, req: QuerySegmentation.Request,
                                res: QuerySegmentation.Response) -> QuerySegmentation.Response:
        """Score the map's surface points against ``req.text``; the points at or above the threshold go back in the
        response and on ``~/segmentation`` (map frame, heat colours, a ``relevancy`` field)."""
        t0 = time.perf_counter()
        try:
            th = float(req.threshold)
            if not math.isfinite(th) or not 0.0 <= th <= 1.0:
                raise ValueError(f"threshold must be within [0, 1] (0 = the default), got {req.threshold}")
            seg, cands = self.mapper.semantics.query(str(req.text), th if th > 0 else None,
                                                     [str(n) for n in req.negatives] or None)
            stamp = self.get_clock().now().to_msg()
            res.cloud = conv.pointcloud2_xyzrgb(seg.xyz, seg.colors, {"relevancy": seg.relevancy}, stamp,
                                                self.map_frame)
            self._publish(self.pub_seg, res.cloud)
            if self.viewer is not None:
                self.viewer.show_query(seg)
            res.num_points, res.num_candidates, res.teacher = len(seg.xyz), seg.n_candidates, seg.teacher
            res.success = True
            res.message = (f"{seg.text!r}: {len(seg.xyz)} of {seg.n_candidates} surface points with relevancy >= "
                           f"{th if th > 0 else self.mapper.semantics.cfg.threshold:g} (teacher {seg.teacher}, "
                           f"candidates from step {cands.step}); published on ~/segmentation")
            self.get_logger().info(f"query_segmentation: {res.message} in {time.perf_counter() - t0:.2f} s")
            if not self._picture_busy:  # after the answer, off the query thread; skipped while the last one renders
                self._picture_busy = True
                self._picture_pool.submit(self._publish_relevancy_image, seg.text, th if th > 0 else None,
                                          [str(n) for n in req.negatives] or None)
        except Exception as exc:  # noqa: BLE001 - every refusal is an answer with the reason
            res.success, res.message = False, f"query_segmentation failed: {exc}"
        res.seconds = float(time.perf_counter() - t0)
        return res

    def _publish_relevancy_image(self, text: str, threshold, negatives) -> None:
        """The query's 2D relevancy at the newest keyframe's view on ``~/segmentation/image``."""
        try:
            img, stamp_ns = self.mapper.semantics.relevancy_view(text, threshold, negatives,
                                                                 self.mapper.cfg.render_width)
            self._publish(self.pub_seg_image, conv.array_to_image_msg(img, conv.ns_to_stamp(stamp_ns),
                                                                      self._camera_frame(), "rgb8"))
        except Exception as exc:  # noqa: BLE001
            self._report("relevancy image", exc)
        finally:
            self._picture_busy = False

    # ------------------------------------------------------------------------------------------------ shutdown
    def shutdown(self) -> None:
        if getattr(self, "viewer", None) is not None:
            self.viewer.stop()
        self.mapper.stop()
        try:  # where the 2 cores went over the node's life (docs/results/online.md: the CPU plan)
            cores = self.cpu.cores()
            self.get_logger().info("CPU by thread (average cores over the run): "
                                   + ", ".join(f"{k} {v:.2f}" for k, v in cores.items()))
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / CPU_FILE).write_text(json.dumps(cores, indent=2))
        except Exception as exc:  # noqa: BLE001 - shutting down: report, never raise
            self._report("CPU report", exc)
        self._service_pool.shutdown(wait=False, cancel_futures=True)
        self._export_pool.shutdown(wait=False, cancel_futures=True)
        self._query_pool.shutdown(wait=False, cancel_futures=True)
        self._picture_pool.shutdown(wait=False, cancel_futures=True)


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
        # a daemon thread still running native code at interpreter exit can abort the process (non-daemon ones, the
        # service pools' workers, are joined by the interpreter): name it for the report
        busy = [t.name for t in threading.enumerate() if t.daemon and t.is_alive() and t.name.startswith("nerf_mapper")]
        if busy:
            print(f"nerf_mapper: threads still running at exit: {', '.join(busy)}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
