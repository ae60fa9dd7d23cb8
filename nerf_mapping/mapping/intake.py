"""What comes into the mapper before keyframe selection: the image queue, odometry, camera intrinsics, the static
transform tree (base -> camera extrinsic), restarts of the source's clock, and the per-reason counters of everything
dropped on the way. No ROS: the node converts messages and calls these methods from its callbacks.

Flow: :meth:`Intake.submit_image` only enqueues (the caller's thread, e.g. a DDS callback, never decodes); the
mapper's keyframe worker takes :meth:`Intake.pending` items in time order and calls :meth:`Intake.resolve`, which
waits (odometry not yet past the image, camera info or extrinsic not yet known), drops (counted, with a throttled
log line) or returns a :class:`Candidate`: the decoded image with its raw odometry body and camera poses (SE(3)
interpolation at the image stamp, :mod:`.sync`).
"""
from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from typing import Callable, NamedTuple

import numpy as np

from nerf_mapping.cameras import Cameras
from nerf_mapping.mapping.config import MapperConfig, extrinsic_matrix
from nerf_mapping.mapping.sync import AFTER_BUFFER, EMPTY, OdometryBuffer

WAIT = "wait"
"""What :meth:`Intake.resolve` returns for an image that must wait (and later images with it: time order)."""


class Candidate(NamedTuple):
    """An image with its raw odometry poses at its stamp, ready for keyframe selection."""

    image: np.ndarray        # uint8 [H,W,3]
    T_odom_cam: np.ndarray   # 4x4 camera (optical) pose = T_odom_base @ T_base_cam
    T_odom_base: np.ndarray  # 4x4 body pose
    stamp_ns: int


class Intake:
    def __init__(self, cfg: MapperConfig, log, on_time_jump: Callable[[], None] | None = None):
        """``log``: anything with ``info`` / ``warning``; ``on_time_jump()`` is called when the source's clock
        restarted (see ``sync.time_jump_s``)."""
        self.cfg = cfg
        self.log = log
        self.on_time_jump = on_time_jump
        s = cfg.sync
        self.odom = OdometryBuffer(s.buffer_s, s.max_gap_s, s.tolerance_s)
        self.intrinsics: dict | None = None
        self.camera_frame = cfg.camera_frame
        self.T_base_cam_cfg = extrinsic_matrix(cfg.extrinsic_base_camera)
        self.T_base_cam_tf: np.ndarray | None = None
        self._static_edges: dict[str, tuple[str, np.ndarray]] = {}  # child -> (parent, T_parent_child)
        self.counts: Counter = Counter()  # per-reason counters (the node publishes them)
        self._counts_lock = threading.Lock()
        self._last_warn: dict[str, float] = {}
        self.images_received = 0
        self.images_dropped = 0
        self._last_image_ns: int | None = None
        self._jump_lock = threading.Lock()
        self._t_first_image: float | None = None
        self._fallback_logged = False
        self.latest_odom_ns = 0
        self._last_odom_wall = 0.0
        self._queue: deque = deque()
        self._queue_cv = threading.Condition()

    # ------------------------------------------------------------------------------------------------ counters
    def count(self, reason: str, warning: str | None = None, image: bool = False) -> None:
        """Count an input event by ``reason``; log ``warning`` (throttled per reason) when given."""
        with self._counts_lock:
            self.counts[reason] += 1
            if image:
                self.images_dropped += 1
        if warning:
            self.warn(reason, warning)

    def drop_image(self, reason: str, detail: str = "") -> None:
        self.count("image_" + reason, f"image dropped ({reason})" + (f": {detail}" if detail else ""), image=True)

    def reject_image(self, reason: str, detail: str = "") -> None:
        """An image message that failed validation before it could be queued."""
        self.images_received += 1
        self.drop_image(reason, detail)

    def warn(self, key: str, text: str, period: float = 5.0) -> None:
        """Log ``text`` at most once per ``period`` seconds per ``key`` (a per-call-site throttle would hide
        distinct reasons)."""
        now = time.monotonic()
        if now - self._last_warn.get(key, -1e9) >= period:
            self._last_warn[key] = now
            self.log.warning(text)

    def stats(self) -> dict:
        """Per-reason counters plus totals."""
        with self._counts_lock:
            stats = dict(self.counts)
        stats.update({"images_received": self.images_received, "images_dropped": self.images_dropped,
                      "queue": len(self._queue)})
        return stats

    # ------------------------------------------------------------------------------------------------ images
    def submit_image(self, stamp_ns: int, frame_id: str, payload, decoder: Callable[[object], np.ndarray]) -> bool:
        """Queue an image (``decoder(payload)`` -> uint8 [H,W,3], called on the worker thread). Images whose stamp is
        not newer than the previous one are dropped. Returns whether it was queued."""
        self.images_received += 1
        self._check_time_jump(stamp_ns, self._last_image_ns, "image")
        if self._last_image_ns is not None and stamp_ns <= self._last_image_ns:
            self.drop_image("stamp_backwards", f"stamp {stamp_ns} <= previous {self._last_image_ns}")
            return False
        self._last_image_ns = stamp_ns
        if self._t_first_image is None:
            self._t_first_image = time.monotonic()
        with self._queue_cv:
            if len(self._queue) >= self.cfg.sync.queue_size:
                self._queue.popleft()
                self.drop_image("queue_full")
            self._queue.append((stamp_ns, frame_id, payload, decoder, time.monotonic()))
            self._queue_cv.notify()
        return True

    @property
    def queue_length(self) -> int:
        return len(self._queue)

    def pending(self, timeout: float = 0.05) -> list:
        """The queued images in time order (waits up to ``timeout`` s for one when the queue is empty)."""
        with self._queue_cv:
            if not self._queue:
                self._queue_cv.wait(timeout)
            return list(self._queue)

    def done(self, item) -> None:
        """``item`` (from :meth:`pending`) was handled: it leaves the queue (unless a time jump cleared it)."""
        with self._queue_cv:
            if self._queue and self._queue[0] is item:
                self._queue.popleft()

    def wake(self) -> None:
        with self._queue_cv:
            self._queue_cv.notify_all()

    def _check_time_jump(self, stamp_ns: int, last_ns: int | None, source: str) -> None:
        """Start intake afresh when ``stamp_ns`` jumped back by more than ``sync.time_jump_s`` (see there)."""
        jump_ns = int(self.cfg.sync.time_jump_s * 1e9)
        if last_ns is None or stamp_ns >= last_ns - jump_ns:
            return
        with self._jump_lock:
            # the other input may have reset already (image and odometry callbacks run on different threads)
            newest = max(self._last_image_ns or 0, (self.odom.span_ns or (0, 0))[1])
            if stamp_ns >= newest - jump_ns:
                return
            self.odom.clear()
            self._last_image_ns = None
            if self.on_time_jump is not None:
                self.on_time_jump()
            with self._queue_cv:
                stale = len(self._queue)
                self._queue.clear()
            self.count("time_jump_back")
            self.log.warning(f"{source} time jumped back by {(newest - stamp_ns) * 1e-9:.1f} s (looping or restarted "
                             f"player?): odometry buffer and {stale} pending image(s) cleared, the map is kept")

    def resolve(self, item) -> Candidate | str | None:
        """One queued image (an item of :meth:`pending`): :data:`WAIT` while it must wait (odometry not yet past its
        stamp, camera info or extrinsic not yet known), None when it was dropped (counted), else a
        :class:`Candidate`."""
        stamp_ns, frame_id, payload, decoder, t_enq = item
        wait_s = self.cfg.sync.wait_s
        try:
            if self.intrinsics is None:
                if time.monotonic() - t_enq < wait_s:
                    return WAIT  # its CameraInfo (same stamp) may simply come right after the image
                self.drop_image("no_camera_info")
                return None
            if not self.camera_frame and frame_id:
                self.camera_frame = frame_id
                self._resolve_extrinsic()
            T_base_cam = self.camera_extrinsic()
            if T_base_cam is None:
                return WAIT  # waiting (at most tf_wait_s after the first image) for the static transforms
            T_odom_base, reason = self.odom.pose_at(stamp_ns, count=False)
            if T_odom_base is None:
                # Odometry not yet past the image: wait while odometry is still flowing (a busy executor may deliver
                # it late), but give up wait_s after both the image and the newest odometry arrived.
                waited = time.monotonic() - max(t_enq, self._last_odom_wall)
                if reason in (AFTER_BUFFER, EMPTY) and waited < wait_s:
                    return WAIT
                self.odom.counts[reason] += 1
                self.drop_image("no_pose_" + reason)
                return None
            image = decoder(payload)
            intr = self.intrinsics
            if image.shape[1] != intr["width"] or image.shape[0] != intr["height"]:
                self.drop_image("size_mismatch", f"{image.shape[1]}x{image.shape[0]} != camera_info "
                                                 f"{intr['width']}x{intr['height']}")
                return None
            return Candidate(image, T_odom_base @ T_base_cam, T_odom_base, stamp_ns)
        except ValueError as exc:
            self.drop_image("invalid", str(exc))
        except Exception as exc:  # noqa: BLE001 - never let the worker die
            self.drop_image("error", repr(exc))
        return None

    # ------------------------------------------------------------------------------------------------ camera
    def set_intrinsics(self, intr: dict, frame_id: str = "") -> None:
        """Camera intrinsics (``fx fy cx cy width height distortion model``); the first ones are kept."""
        if self.intrinsics is not None:
            return
        self.intrinsics = intr
        self.log.info(f"camera: {intr['model']} {intr['width']}x{intr['height']} fx={intr['fx']:.1f}")
        if not self.camera_frame and frame_id:
            self.camera_frame = frame_id
            self._resolve_extrinsic()

    def keyframe_camera(self, c2w_gl: np.ndarray, factor: float, camera: Cameras | None = None) -> Cameras:
        """The camera of an image at model c2w ``c2w_gl``: ``camera``'s intrinsics when the frame came with its own,
        else the camera info's; scaled by ``factor``."""
        if camera is not None:
            cam = Cameras.create(c2w_gl, camera.fx[0], camera.fy[0], camera.cx[0], camera.cy[0],
                                 int(camera.width[0]), int(camera.height[0]), camera.distortion[0],
                                 int(camera.model[0]))
        else:
            it = self.intrinsics
            cam = Cameras.create(c2w_gl, it["fx"], it["fy"], it["cx"], it["cy"], it["width"], it["height"],
                                 it["distortion"], it["model"])
        return cam if factor == 1.0 else cam.scaled(factor)

    def view_camera(self, c2w: np.ndarray, w: int, h: int) -> Cameras:
        """A ``w`` x ``h`` camera at ``c2w`` with the camera info's intrinsics scaled per axis (without camera info a
        60 degree horizontal field of view)."""
        it = self.intrinsics
        if it is not None:
            sx, sy = w / it["width"], h / it["height"]
            return Cameras.create(c2w, it["fx"] * sx, it["fy"] * sy, it["cx"] * sx, it["cy"] * sy, w, h)
        f = 0.5 * w / math.tan(math.radians(30.0))
        return Cameras.create(c2w, f, f, w / 2, h / 2, w, h)

    def add_static_transform(self, parent: str, child: str, T_parent_child: np.ndarray) -> None:
        """An edge of the static transform tree (base -> ... -> camera is resolved from these)."""
        self._static_edges[child] = (parent, np.asarray(T_parent_child, dtype=np.float64))
        self._resolve_extrinsic()

    def static_transform(self, parent: str, child: str) -> np.ndarray | None:
        """T_parent_child through the static transform tree (identity when they are the same frame), or None while
        the tree does not connect them. Both frames are walked up to their common ancestor."""
        if not parent or not child:
            return None
        if parent == child:
            return np.eye(4)

        def chain(frame: str) -> dict[str, np.ndarray]:  # ancestor -> T_ancestor_frame
            out, T, seen = {frame: np.eye(4)}, np.eye(4), set()
            while frame in self._static_edges and frame not in seen:
                seen.add(frame)
                up, T_uf = self._static_edges[frame]
                T = T_uf @ T
                frame = up
                out[frame] = T
            return out

        a, b = chain(parent), chain(child)
        common = next((f for f in b if f in a), None)
        if common is None:
            return None
        return np.linalg.inv(a[common]) @ b[common]

    def _resolve_extrinsic(self) -> None:
        cam = self.camera_frame
        if not cam:
            return
        T = self.static_transform(self.cfg.base_frame, cam)
        if T is None:
            return  # incomplete tree: wait for more edges
        if self.T_base_cam_tf is None:
            self.log.info(f"extrinsic {self.cfg.base_frame}->{cam} from /tf_static: t={T[:3, 3].round(3).tolist()}")
        self.T_base_cam_tf = T

    def camera_extrinsic(self) -> np.ndarray | None:
        """base->camera optical: from the static transforms when known, else (``tf_wait_s`` after the first image)
        the configured one; None while still waiting."""
        if self.T_base_cam_tf is not None:
            return self.T_base_cam_tf
        if self.cfg.use_tf_static:
            t_first = self._t_first_image
            if t_first is None or time.monotonic() - t_first < self.cfg.tf_wait_s:
                return None
            if not self._fallback_logged:
                self._fallback_logged = True
                self.log.warning(f"no {self.cfg.base_frame}->{self.camera_frame or 'camera'} static transform: "
                                 "using the configured extrinsic_base_camera")
        return self.T_base_cam_cfg

    # ------------------------------------------------------------------------------------------------ odometry
    def add_odometry(self, stamp_ns: int, frame_id: str, T_odom_base: np.ndarray) -> bool:
        """An odometry pose of the base in the odometry frame; dropped (and counted) in another frame or when its
        stamp goes backwards."""
        if frame_id and frame_id != self.cfg.odom_frame:
            self.count("odom_wrong_frame", f"odometry in frame {frame_id!r}, expected {self.cfg.odom_frame!r}: dropped")
            return False
        span = self.odom.span_ns
        self._check_time_jump(stamp_ns, span[1] if span else None, "odometry")
        if not self.odom.add(stamp_ns, T_odom_base):
            self.count("odom_stamp_backwards", "odometry stamp went backwards: dropped")
            return False
        self.count("odom_received")
        self.latest_odom_ns = stamp_ns
        self._last_odom_wall = time.monotonic()
        return True
