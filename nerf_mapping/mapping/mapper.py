"""The online mapper: camera images and odometry in; keyframes, a trained map, refined poses and the odometry drift
out. No ROS here: the node (:mod:`nerf_mapping.ros.mapper_node`) converts messages and calls this object, and so do
``benchmark drift`` and the unit tests, which therefore exercise exactly what the node runs.

Data flow::

    submit_image(stamp, frame, payload, decoder) --queue--> keyframe worker: odometry at the image stamp (SE(3)
        interpolation, :mod:`.sync`) @ base->camera extrinsic (/tf_static tree or the configured one), keyframe
        policy (:mod:`.keyframes`), downscale, insert into the trainer's frame store at the drift-corrected pose
    add_odometry(stamp, frame, T_odom_base) -> odometry buffer
    training thread: Trainer.train (the project's one training loop; open-ended, it waits while there are no
        keyframes), the periodic render of the newest keyframe between steps
    pose_state() / drift_estimate() -> odometry path, refined path, T_map_odom (from the pose corrections)
    render_view(), status(), save(), load()

Threads: ``submit_image`` only enqueues (the caller's thread, e.g. a DDS callback, never decodes); the keyframe
worker decodes, synchronises and inserts; the training thread steps. ``_state_lock`` guards swapping the trainer
(``load``) and the keyframe bookkeeping; the trainer's own lock guards its parameters against concurrent renders.
Every bad input is counted (``counts``, by reason) and dropped, never fatal.

Drift: odometry drifts, so the map frame (the model's world) and the odometry frame differ by ``T_map_odom``. With
the drift spline (``training.drift_knot_s > 0``, the default) a keyframe enters at its raw odometry pose and the
spline learns the drift; otherwise it enters at ``T_map_odom_est @ T_odom_cam`` (the latest estimate applied) and the
per-keyframe corrections learn the rest. Either way each keyframe's refined pose implies a ``T_map_odom``
(:mod:`nerf_mapping.pose.drift`), and the newest keyframe's is the current estimate.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from nerf_mapping.cameras import Cameras
from nerf_mapping.config.presets import auto_extent_scene, online_config, online_scene
from nerf_mapping.geometry import model_c2w_to_optical_pose, optical_pose_to_model_c2w
from nerf_mapping.geometry.rigid import make_pose, matrix_from_quat_xyzw
from nerf_mapping.mapping import autosave, map_io
from nerf_mapping.mapping.extent import Extent, ExtentConfig, auto_extent, keyframe_translation, parse_scene_box
from nerf_mapping.mapping.keyframes import (Keyframe, KeyframeConfig, KeyframeSelector, downscale_factor,
                                            downscale_image)
from nerf_mapping.mapping.semantics import OnlineSemantics, SemanticsConfig
from nerf_mapping.mapping.sync import AFTER_BUFFER, EMPTY, OdometryBuffer
from nerf_mapping.pose import drift
from nerf_mapping.pose.correction import apply_deltas
from nerf_mapping.rendering.budget import RenderCost, budget_size, lattice_image, lattice_order, upsample_render
from nerf_mapping.training.frame_store import FrameStore
from nerf_mapping.training.trainer import Trainer

RENDER_CHUNK = 1 << 12  # rays per render chunk: the trainer lock is taken per chunk (and memory is bounded by it)
DEADLINE_CHUNK = 1 << 10  # RenderView's chunks: its deadline is checked per chunk (~0.1 s of rays on an early map)
HISTORY = 20000  # keyframes kept for the odometry / refined paths (evicted keyframes stay on the path)


@dataclass
class SyncConfig:
    """Image <-> odometry synchronisation."""

    buffer_s: float = 10.0
    """Odometry history kept for interpolation (s)."""
    max_gap_s: float = 0.25
    """Largest gap between the two odometry samples bracketing an image (s)."""
    tolerance_s: float = 0.02
    """An image this close outside the buffer snaps to the end sample (s)."""
    wait_s: float = 1.0
    """How long an image waits for odometry newer than its stamp (or for its CameraInfo) before it is dropped (s)."""
    queue_size: int = 64
    """Images waiting for odometry / keyframe selection (the oldest is dropped beyond)."""
    time_jump_s: float = 1.0
    """A stamp this much older than the newest one seen means the source restarted (a looping or restarted bag
    player, a simulator reset): the odometry buffer and pending images are cleared and intake goes on from the new
    time, keeping the map. Smaller backwards steps are reordering: that message is dropped (s)."""


@dataclass
class OnlineTrainingConfig:
    """The background optimisation (see :func:`nerf_mapping.config.presets.online_config` for the trainer)."""

    enabled: bool = True
    """Run the training thread (off: the mapper only collects keyframes)."""
    target_samples_per_step: int = 1 << 15
    """Samples per optimisation step (rays adapt)."""
    threads: int = 0
    """torch intra-op threads (0: torch's default)."""
    max_steps: int = 0
    """Stop training after this many steps (0: unlimited)."""
    time_budget_s: float = 0.0
    """Stop training after this many seconds (0: unlimited, no learning-rate decay)."""
    pose_refinement: str = "so3xr3"
    """Joint pose refinement: off | so3xr3 | se3 | quat | 6d."""
    pose_lr: float = 1e-4
    """Per-keyframe pose-correction learning rate (each keyframe gets ~2 rays a step: keep it small)."""
    drift_knot_s: float = 2.0
    """Odometry drift spline: one world-frame knot every this many seconds of keyframe time (0: per-keyframe
    corrections only)."""
    drift_lr: float = 2e-4
    """Learning rate of the drift-spline knots (rad and m per step)."""
    seed: int = 0
    overrides: tuple[str, ...] = ()
    """Extra trainer-config overrides ``dotted.key=value``."""


@dataclass
class MapperConfig:
    scene_box: tuple[float, ...] | str = "auto"
    """``auto`` (default): the map's extent follows what the mapper observes (:mod:`.extent`: fixed from the first
    keyframes' cameras, far field contracted), in the capture's own units; or [xmin, ymin, zmin, xmax, ymax, zmax] in
    the map frame (the demo room's: [-3, -2.5, -0.2, 3, 2.5, 3]). Measured against each other on bags of the demo
    room, DTU and fox: docs/results/online.md."""
    unbounded: bool = False
    """With a given ``scene_box``: contract space outside it (an automatic extent always does)."""
    near: float = 0.05
    """Ray near bound (map units)."""
    far: float = 0.0
    """Ray far bound (map units); 0 = the scene box diagonal (automatic extent: the outermost occupancy level)."""
    extent: ExtentConfig = field(default_factory=ExtentConfig)
    """How the automatic extent is fixed (:mod:`.extent`)."""
    odom_frame: str = "odom"
    """Frame of the odometry poses (others are dropped)."""
    base_frame: str = "base_link"
    """Body frame the odometry pose refers to."""
    camera_frame: str = ""
    """Camera optical frame ('' = the image's frame)."""
    use_tf_static: bool = True
    """Take the base->camera extrinsic from static transforms when they arrive."""
    tf_wait_s: float = 1.0
    """Seconds after the first image to wait for static transforms before using ``extrinsic_base_camera``."""
    extrinsic_base_camera: tuple[float, ...] = (0.0, 0.0, 0.0, -0.5, 0.5, -0.5, 0.5)
    """base->camera optical [x, y, z, qx, qy, qz, qw] when static transforms are unavailable (default: the optical
    axes looking along base +x)."""
    render_period_s: float = 1.0
    """Periodic render of the newest keyframe (s); stretched so renders take <= 10 % of the time (training needs the
    rest). 0 = off."""
    render_width: int = 160
    """Width of the periodic render (pixels)."""
    render_budget_s: float = 1.0
    """``render_view`` answers within about this many seconds (:mod:`nerf_mapping.rendering.budget`): when the recent
    renders' cost per ray predicts more at the requested size, the view is rendered smaller and upsampled to it, and
    training pauses while it renders (it would otherwise interleave and double the latency). 0: always the full
    resolution, interleaved with training."""
    keyframe: KeyframeConfig = field(default_factory=KeyframeConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    training: OnlineTrainingConfig = field(default_factory=OnlineTrainingConfig)
    semantics: SemanticsConfig = field(default_factory=SemanticsConfig)
    autosave_dir: str = ""
    """Where the map is autosaved (:mod:`.autosave`); '' = no autosave (the node uses ``output_dir/autosave``)."""
    autosave_period_s: float = 30.0
    """Seconds between autosaves (0 = off): a crash loses at most this much mapping."""
    autosave_keep: int = 2
    """Complete autosaves kept (older ones are deleted only after a newer one is complete)."""
    resume: bool = False
    """At start, load the newest complete autosave of ``autosave_dir`` (a new map when there is none)."""


def extrinsic_matrix(v) -> np.ndarray:
    """[x, y, z, qx, qy, qz, qw] -> 4x4 (ValueError unless 7 finite numbers with a unit quaternion)."""
    v = [float(x) for x in v]
    if len(v) != 7 or not all(math.isfinite(x) for x in v):
        raise ValueError("extrinsic_base_camera must be 7 finite numbers [x, y, z, qx, qy, qz, qw]")
    q = np.array(v[3:])
    if abs(float(np.linalg.norm(q)) - 1.0) > 1e-2:
        raise ValueError("extrinsic_base_camera: the quaternion is not unit")
    return make_pose(matrix_from_quat_xyzw(q), v[:3])


class OnlineMapper:
    def __init__(self, cfg: MapperConfig | None = None, logger=None,
                 on_render: Callable[[np.ndarray, int], None] | None = None):
        """``logger``: anything with ``info`` / ``warning`` (a ``logging.Logger``, the node's rclpy logger; default
        ``logging.getLogger("nerf_mapping.mapper")``). ``on_render(rgb uint8 [H,W,3], stamp_ns)`` receives the periodic
        render (from the training thread)."""
        self.cfg = cfg = cfg or MapperConfig()
        self.log = logger or logging.getLogger("nerf_mapping.mapper")
        self.on_render = on_render
        kc = cfg.keyframe
        if kc.capacity < 2:
            raise ValueError("keyframe.capacity must be >= 2")
        t = cfg.training
        if t.threads > 0:
            torch.set_num_threads(t.threads)
        box = parse_scene_box(cfg.scene_box)
        self.extent: Extent | None = None
        """The automatic extent once fixed (None: a given box, or still bootstrapping)."""
        self._extent_ready = threading.Event()  # training waits for it (set at once with a given box)
        self._bootstrap: list[tuple] = []  # keyframes held back until the automatic extent is fixed
        self._bootstrap_t0: float | None = None
        # With an automatic extent this first trainer is a placeholder that holds no keyframe and never trains: the
        # real one is built when the extent is fixed (_fix_extent), with its own box and marching settings.
        self.scene = online_scene(box or (-1.0, -1.0, -1.0, 1.0, 1.0, 1.0), cfg.unbounded, cfg.near, cfg.far)
        self.trainer_cfg = self._trainer_config(self.scene)
        self.trainer = Trainer(self.trainer_cfg, self.scene, FrameStore(capacity=kc.capacity, seed=t.seed))
        if box is not None:
            self._extent_ready.set()
        if cfg.extent.bootstrap_keyframes < 1:
            raise ValueError("extent.bootstrap_keyframes must be >= 1")
        self.selector = KeyframeSelector(kc)
        self.odom = OdometryBuffer(cfg.sync.buffer_s, cfg.sync.max_gap_s, cfg.sync.tolerance_s)
        self.intrinsics: dict | None = None
        self.camera_frame = cfg.camera_frame
        self.T_base_cam_cfg = extrinsic_matrix(cfg.extrinsic_base_camera)
        self.T_base_cam_tf: np.ndarray | None = None
        self._static_edges: dict[str, tuple[str, np.ndarray]] = {}  # child -> (parent, T_parent_child)
        # input bookkeeping
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
        # keyframes: live frame id -> Keyframe; every keyframe ever taken (frame id, Keyframe) for the paths
        self._state_lock = threading.RLock()
        self.kf_info: dict[int, Keyframe] = {}
        self.kf_history: deque = deque(maxlen=HISTORY)
        self._latest_kf: int | None = None
        # (trainer, [F,3,4] camera-frame corrections) refreshed after every step, so readers never touch the pose
        # parameters while the trainer updates or grows them
        self._pose_snap: tuple | None = None
        # training thread
        self._stop = threading.Event()
        self._interrupt = threading.Event()  # ends the current training run (stop, or a map loaded)
        self._threads: list[threading.Thread] = []
        self.training_active = False
        self._rays_accum, self._rays_t, self._rays_per_second = 0.0, time.monotonic(), 0.0
        self._next_render = 0.0
        self._render_cost = RenderCost()  # seconds per ray of the recent renders, for render_view's budget
        self.last_autosave: tuple | None = None  # (path, step, seconds) of the newest autosave
        self.semantics = OnlineSemantics(cfg.semantics, self)
        """Teacher, language field and text queries (:mod:`.semantics`); off unless ``semantics.teacher`` is set."""

    def _trainer_config(self, scene, extent: Extent | None = None):
        t = self.cfg.training
        return online_config(
            scene, pose_mode=pose_mode(t.pose_refinement), pose_lr=t.pose_lr, drift_knot_s=t.drift_knot_s,
            drift_lr=t.drift_lr, target_samples_per_step=t.target_samples_per_step, seed=t.seed,
            overrides=[o for o in t.overrides if str(o).strip()], extent=extent)

    # ------------------------------------------------------------------------------------------------ extent
    @property
    def extent_ready(self) -> bool:
        """Whether the map's extent is known (a given box, a fixed automatic extent or a loaded map)."""
        return self._extent_ready.is_set()

    def _maybe_fix_extent(self, force: bool = False) -> None:
        """Fix the automatic extent once ``extent.bootstrap_keyframes`` keyframes are held back, or
        ``bootstrap_timeout_s`` after the first (``force``: now, with whatever is held)."""
        if self._extent_ready.is_set() or not self._bootstrap:
            return
        ec = self.cfg.extent
        if not (force or len(self._bootstrap) >= ec.bootstrap_keyframes
                or time.monotonic() - self._bootstrap_t0 >= ec.bootstrap_timeout_s):
            return
        self._fix_extent()

    def _fix_extent(self) -> None:
        """Decide the extent from the held-back keyframes, build the trainer for it and insert them."""
        with self._state_lock:
            if self._extent_ready.is_set():
                return
            held, self._bootstrap = self._bootstrap, []
            poses = np.stack([h[1] for h in held])  # T_odom_cam (optical): the map frame is the odometry frame here
            fx = []
            for image, _, _, _, camera in held:
                k = downscale_factor(image.shape[1], self.cfg.keyframe.max_width)
                fx.append((float(camera.fx[0]) if camera is not None else float(self.intrinsics["fx"])) / k)
            ext = auto_extent(poses[:, :3, 3], poses[:, :3, 2], float(np.median(fx)), self.cfg.extent)
            scene = auto_extent_scene(ext, self.cfg.near)
            cfg = self._trainer_config(scene, ext)
            old = self.trainer
            self.scene, self.trainer_cfg, self.extent = scene, cfg, ext
            self.trainer = Trainer(cfg, scene, old.frames)
            self.selector.cfg = dataclasses.replace(
                self.selector.cfg, min_translation=keyframe_translation(self.cfg.keyframe.min_translation, ext))
            self._extent_ready.set()
        self.log.info(f"map extent fixed from {len(held)} keyframe(s): {ext.summary()}")
        for item in held:
            self.add_keyframe(*item)

    # ------------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Resume from the newest autosave (``resume``), then start the keyframe worker, the training thread (when
        enabled) and the autosave thread (when configured)."""
        if self.cfg.resume:
            self.resume()
        self._threads = [threading.Thread(target=self._keyframe_loop, name="nerf_mapper_keyframes", daemon=True)]
        if self.cfg.autosave_dir and self.cfg.autosave_period_s > 0:
            self._threads.append(threading.Thread(target=self._autosave_loop, name="nerf_mapper_autosave",
                                                  daemon=True))
        if self.cfg.training.enabled:
            self._threads.append(threading.Thread(target=self._training_loop, name="nerf_mapper_training",
                                                  daemon=True))
        for th in self._threads:
            th.start()
        self.semantics.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._interrupt.set()
        with self._queue_cv:
            self._queue_cv.notify_all()
        self.semantics.wake()
        for th in self._threads:
            if th.is_alive():
                th.join(timeout=timeout)
        self.semantics.join(timeout)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # ------------------------------------------------------------------------------------------------ counters
    def count(self, reason: str, warning: str | None = None, image: bool = False) -> None:
        """Count an input event by ``reason``; log ``warning`` (throttled per reason) when given."""
        with self._counts_lock:
            self.counts[reason] += 1
            if image:
                self.images_dropped += 1
        if warning:
            self._warn(reason, warning)

    def drop_image(self, reason: str, detail: str = "") -> None:
        self.count("image_" + reason, f"image dropped ({reason})" + (f": {detail}" if detail else ""), image=True)

    def reject_image(self, reason: str, detail: str = "") -> None:
        """An image message that failed validation before it could be queued."""
        self.images_received += 1
        self.drop_image(reason, detail)

    def _warn(self, key: str, text: str, period: float = 5.0) -> None:
        now = time.monotonic()  # throttled per reason: a per-call-site throttle would hide distinct reasons
        if now - self._last_warn.get(key, -1e9) >= period:
            self._last_warn[key] = now
            self.log.warning(text)

    # ------------------------------------------------------------------------------------------------ inputs
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

    def _check_time_jump(self, stamp_ns: int, last_ns: int | None, source: str) -> None:
        """Start intake afresh when ``stamp_ns`` jumped back by more than ``sync.time_jump_s`` (see there)."""
        if last_ns is None or stamp_ns >= last_ns - int(self.cfg.sync.time_jump_s * 1e9):
            return
        with self._jump_lock:
            # the other input may have reset already (image and odometry callbacks run on different threads)
            newest = max(self._last_image_ns or 0, (self.odom.span_ns or (0, 0))[1])
            if stamp_ns >= newest - int(self.cfg.sync.time_jump_s * 1e9):
                return
            self.odom.clear()
            self._last_image_ns = None
            self.selector.restart_time()
            with self._queue_cv:
                stale = len(self._queue)
                self._queue.clear()
            self.count("time_jump_back")
            self.log.warning(f"{source} time jumped back by {(newest - stamp_ns) * 1e-9:.1f} s (looping or restarted "
                             f"player?): odometry buffer and {stale} pending image(s) cleared, the map is kept")

    @property
    def queue_length(self) -> int:
        return len(self._queue)

    def set_intrinsics(self, intr: dict, frame_id: str = "") -> None:
        """Camera intrinsics (``fx fy cx cy width height distortion model``); the first ones are kept."""
        if self.intrinsics is not None:
            return
        self.intrinsics = intr
        self.log.info(f"camera: {intr['model']} {intr['width']}x{intr['height']} fx={intr['fx']:.1f}")
        if not self.camera_frame and frame_id:
            self.camera_frame = frame_id
            self._resolve_extrinsic()

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

    def add_static_transform(self, parent: str, child: str, T_parent_child: np.ndarray) -> None:
        """An edge of the static transform tree (base -> ... -> camera is resolved from these)."""
        self._static_edges[child] = (parent, np.asarray(T_parent_child, dtype=np.float64))
        self._resolve_extrinsic()

    def _resolve_extrinsic(self) -> None:
        cam = self.camera_frame
        if not cam:
            return
        T = np.eye(4)
        frame, seen = cam, set()
        while frame != self.cfg.base_frame:
            if frame in seen or frame not in self._static_edges:
                return  # incomplete (or cyclic) tree: wait for more edges
            seen.add(frame)
            parent, T_pc = self._static_edges[frame]
            T = T_pc @ T
            frame = parent
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

    # ------------------------------------------------------------------------------------------------ keyframes
    def _keyframe_loop(self) -> None:
        while not self._stop.is_set():
            self._maybe_fix_extent()  # the bootstrap timeout, also when no new keyframe comes
            with self._queue_cv:
                if not self._queue:
                    self._queue_cv.wait(0.05)
                items = list(self._queue)
            if not items:
                continue
            for item in items:
                if self._stop.is_set():
                    return
                if not self.process_image(*item):
                    break  # waiting for odometry: later images wait too (time order)
                with self._queue_cv:
                    if self._queue and self._queue[0] is item:
                        self._queue.popleft()
            else:
                continue
            time.sleep(0.01)

    def process_image(self, stamp_ns, frame_id, payload, decoder, t_enq) -> bool:
        """One queued image: False when it must wait (odometry not yet past its stamp, camera info or extrinsic not
        yet known), True when it was handled (taken as a keyframe, rejected by the policy, or dropped)."""
        wait_s = self.cfg.sync.wait_s
        try:
            if self.intrinsics is None:
                if time.monotonic() - t_enq < wait_s:
                    return False  # its CameraInfo (same stamp) may simply come right after the image
                self.drop_image("no_camera_info")
                return True
            if not self.camera_frame and frame_id:
                self.camera_frame = frame_id
                self._resolve_extrinsic()
            T_base_cam = self.camera_extrinsic()
            if T_base_cam is None:
                return False  # waiting (at most tf_wait_s after the first image) for the static transforms
            T_odom_base, reason = self.odom.pose_at(stamp_ns, count=False)
            if T_odom_base is None:
                # Odometry not yet past the image: wait while odometry is still flowing (a busy executor may deliver
                # it late), but give up wait_s after both the image and the newest odometry arrived.
                waited = time.monotonic() - max(t_enq, self._last_odom_wall)
                if reason in (AFTER_BUFFER, EMPTY) and waited < wait_s:
                    return False
                self.odom.counts[reason] += 1
                self.drop_image("no_pose_" + reason)
                return True
            image = decoder(payload)
            intr = self.intrinsics
            if image.shape[1] != intr["width"] or image.shape[0] != intr["height"]:
                self.drop_image("size_mismatch", f"{image.shape[1]}x{image.shape[0]} != camera_info "
                                                 f"{intr['width']}x{intr['height']}")
                return True
            T_odom_cam = T_odom_base @ T_base_cam
            ok, why = self.selector.consider(image, T_odom_cam, stamp_ns)
            self.count("keyframe_" + why)
            if ok:
                self.add_keyframe(image, T_odom_cam, T_odom_base, stamp_ns)
        except ValueError as exc:
            self.drop_image("invalid", str(exc))
        except Exception as exc:  # noqa: BLE001 - never let the worker die
            self.drop_image("error", repr(exc))
        return True

    def _camera(self, c2w_gl: np.ndarray, factor: float, camera: Cameras | None = None) -> Cameras:
        if camera is not None:  # intrinsics given with the frame
            cam = Cameras.create(c2w_gl, camera.fx[0], camera.fy[0], camera.cx[0], camera.cy[0],
                                 int(camera.width[0]), int(camera.height[0]), camera.distortion[0],
                                 int(camera.model[0]))
        else:
            it = self.intrinsics
            cam = Cameras.create(c2w_gl, it["fx"], it["fy"], it["cx"], it["cy"], it["width"], it["height"],
                                 it["distortion"], it["model"])
        return cam if factor == 1.0 else cam.scaled(factor)

    def add_keyframe(self, image: np.ndarray, T_odom_cam: np.ndarray, T_odom_base: np.ndarray, stamp_ns: int,
                     camera: Cameras | None = None) -> int:
        """Insert a keyframe (uint8 [H,W,3], raw odometry camera and body poses, stamp), bypassing the keyframe
        policy; ``camera`` gives its intrinsics (default: the camera info). With the drift spline it enters at its
        raw odometry pose (the spline's extrapolation is the drift estimate, applying it here as well would count
        it twice), else at the odometry pose corrected by the current drift estimate. Returns its frame id (-1 while
        it is held back for the automatic extent: it enters the map, in order, once the extent is fixed)."""
        if not self._extent_ready.is_set():
            with self._state_lock:
                if not self._extent_ready.is_set():
                    if not self._bootstrap:
                        self._bootstrap_t0 = time.monotonic()
                    self._bootstrap.append((image, T_odom_cam, T_odom_base, stamp_ns, camera))
                    self._maybe_fix_extent()
                    return -1
        k = downscale_factor(image.shape[1], self.cfg.keyframe.max_width)
        small = downscale_image(image, k)
        with self._state_lock:
            tr = self.trainer
            T_map_odom = np.eye(4) if tr.pose.drift_enabled else self._drift_estimate(tr)
            cam = self._camera(optical_pose_to_model_c2w(drift.apply_drift(T_map_odom, T_odom_cam)), 1.0 / k, camera)
            cam.width[:] = small.shape[1]  # exact sizes after the integer crop
            cam.height[:] = small.shape[0]
            # no trainer lock: a step samples before it sizes the pose parameters, so a frame added meanwhile is
            # sized but not trained until the next step (Trainer.step)
            fid = tr.frames.add(torch.from_numpy(np.array(small, order="C")), cam,  # a writable copy
                                 stamp=stamp_ns * 1e-9)
            live = set(tr.frames.frame_ids())
            kf = Keyframe(int(stamp_ns), np.asarray(T_odom_base, dtype=np.float64),
                          np.asarray(T_odom_cam, dtype=np.float64), T_map_odom)
            self.kf_info = {i: v for i, v in self.kf_info.items() if i in live}
            self.kf_info[fid] = kf
            self.kf_history.append((fid, kf))
            self._latest_kf = fid
        self.semantics.on_keyframe(fid, stamp_ns, small, tr)
        return fid

    # ------------------------------------------------------------------------------------------------ training
    def step(self) -> dict | None:
        """One training step on the caller's thread (``benchmark drift`` ties frames to steps this way); None while
        the automatic extent waits for its bootstrap keyframes."""
        if not self._extent_ready.is_set():
            return None
        tr = self.trainer
        st = tr.step()
        self._after_step_bookkeeping(tr, st)
        return st

    def _after_step_bookkeeping(self, tr: Trainer, st: dict) -> None:
        self._rays_accum += st["n_rays"]
        if tr.pose.enabled:
            self._snapshot_pose(tr)  # the pose snapshot that readers use

    def _training_loop(self) -> None:
        """The training thread: :meth:`Trainer.train` (the project's one training loop), open-ended or for the time
        budget, interrupted when a map is loaded (the loop then continues on the new trainer) or the mapper stops.
        ``training.max_steps`` is a cap on the trainer's step count, not a run length: it stops the run without
        turning on the learning-rate decay that a run length would."""
        t = self.cfg.training
        while not self._stop.is_set():
            if not self._extent_ready.wait(0.1):
                continue  # the automatic extent is not fixed yet: nothing to train
            self._interrupt.clear()  # before reading the trainer: a load from now on ends the run below
            if self._stop.is_set():
                break
            tr = self.trainer
            if not (t.max_steps and tr.step_count >= t.max_steps):
                tr.train(time_budget=t.time_budget_s or None, callback=self._after_step, progress=False,
                         stop_event=self._interrupt, on_error=self._step_failed)
            self.training_active = False
            self._interrupt.wait()  # budget or cap reached: idle until a map is loaded or the mapper stops

    def _after_step(self, tr: Trainer, st: dict) -> None:
        self.training_active = True
        self._after_step_bookkeeping(tr, st)
        if self.cfg.training.max_steps and tr.step_count >= self.cfg.training.max_steps:
            self._interrupt.set()
        self._maybe_render(tr)
        # Ingestion before training: a backlog means the keyframe worker and the message callbacks need the CPU (and
        # the GIL) more than one more step does.
        backlog = len(self._queue)
        if backlog > 1:
            time.sleep(0.01 * min(backlog, 20))

    def _step_failed(self, exc: Exception) -> None:
        self._warn("training_step", f"training step failed: {exc!r}")  # keep mapping alive, report and back off
        time.sleep(0.5)

    def _maybe_render(self, tr: Trainer) -> None:
        # not before the first occupancy-grid update: before it the field is a fog that the renderer marches coarsely
        # (bounded, but a picture of nothing)
        now = time.monotonic()
        if (self.on_render is None or self.cfg.render_period_s <= 0 or now < self._next_render
                or tr.step_count <= tr.cfg.grid.update_every):
            return
        t0 = time.monotonic()
        try:
            out = self.render_latest_keyframe(self.cfg.render_width)
            if out is not None:
                self.on_render(*out)
        except Exception as exc:  # noqa: BLE001
            if not self._stop.is_set():
                self._warn("periodic_render", f"periodic render failed: {exc!r}")
        dur = time.monotonic() - t0
        self._next_render = time.monotonic() + max(self.cfg.render_period_s, 9.0 * dur)

    # ------------------------------------------------------------------------------------------------ rendering
    def latest_keyframe_view(self, width: int = 0):
        """(trainer, camera, refined c2w [3,4], stamp_ns) of the newest keyframe, the camera ``width`` pixels wide
        (0: the training resolution); None before the first keyframe."""
        with self._state_lock:
            fid = self._latest_kf
            if fid is None or fid not in self.kf_info:
                return None
            stamp_ns = self.kf_info[fid].stamp_ns
            tr = self.trainer
            cam = tr.frames.camera(fid)
        w = int(cam.width[0])
        factor = min(1.0, width / w) if width > 0 else 1.0
        cams = cam.scaled(factor) if factor != 1.0 else cam
        return tr, cams, self._refined_c2w(tr, fid, cams.c2w[0]), stamp_ns

    def render_latest_keyframe(self, width: int = 0) -> tuple[np.ndarray, int] | None:
        """(rgb uint8 [H,W,3], stamp_ns) of the newest keyframe at its refined pose, ``width`` pixels wide (0: the
        training resolution); None before the first keyframe."""
        view = self.latest_keyframe_view(width)
        if view is None:
            return None
        tr, cams, c2w, stamp_ns = view
        out = self._timed_render(tr, cams, c2w=c2w, exclusive=False)
        return (out["rgb"].clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy(), stamp_ns

    def _view_camera(self, c2w: np.ndarray, w: int, h: int) -> Cameras:
        """A ``w`` x ``h`` camera at ``c2w`` with the camera info's intrinsics scaled per axis (without camera info a
        60 degree horizontal field of view)."""
        it = self.intrinsics
        if it is not None:
            sx, sy = w / it["width"], h / it["height"]
            return Cameras.create(c2w, it["fx"] * sx, it["fy"] * sy, it["cx"] * sx, it["cy"] * sy, w, h)
        f = 0.5 * w / math.tan(math.radians(30.0))
        return Cameras.create(c2w, f, f, w / 2, h / 2, w, h)

    def _timed_render(self, tr: Trainer, cam: Cameras, c2w: torch.Tensor | None = None,
                      exclusive: bool = True, **kw) -> dict[str, torch.Tensor]:
        """Render, timed for the cost model (:class:`RenderCost`). ``exclusive`` (RenderView): the trainer lock is
        held for the whole render, training paused; otherwise (the periodic render) it interleaves with training
        per chunk of rays. ``kw``: :func:`render_camera`'s (``pixel_order``, ``deadline``)."""
        t0 = time.monotonic()
        out = tr.render(cam, 0, c2w=c2w, chunk=kw.pop("chunk", RENDER_CHUNK), exclusive=exclusive, **kw)
        self._render_cost.update(time.monotonic() - t0, int(out["rendered_pixels"]))
        return out

    def render_view(self, T_map_optical: np.ndarray, width: int = 0, height: int = 0,
                    max_size: int = 1920) -> dict[str, np.ndarray]:
        """Render the map from a camera (optical-frame pose in the map frame) with the camera info's intrinsics
        scaled to ``width`` x ``height`` (0: the keyframe width, height from the aspect ratio; without camera info a
        60 degree horizontal field of view). Returns ``rgb`` uint8 [H,W,3], ``depth`` float32 [H,W] (metres) and
        ``rendered_size`` (w, h): smaller than the image when ``render_budget_s`` required it (the image is then
        upsampled from it). The budget counts from the call: waiting for the running training step to end and,
        before any render has been timed, a probe of at most 80 pixels wide that measures the cost, come out of it."""
        t_call = time.monotonic()
        it = self.intrinsics or {"fx": 0.0, "width": 0, "height": 0}
        w = int(width) or int(it["width"] and min(it["width"], self.cfg.keyframe.max_width)) or 160
        h = int(height) or (round(w * it["height"] / it["width"]) if it["width"] else round(w * 0.75))
        if not (8 <= w <= max_size and 8 <= h <= max_size):
            raise ValueError(f"width/height must be within 8..{max_size}, got {w}x{h}")
        c2w = optical_pose_to_model_c2w(T_map_optical)
        tr, budget = self.trainer, float(self.cfg.render_budget_s)
        if budget <= 0:
            out = tr.render(self._view_camera(c2w, w, h), 0, chunk=RENDER_CHUNK)
            rw, rh = w, h
        else:
            with tr.lock:  # waits for the running training step; training pauses until the view is rendered
                if self._render_cost.seconds_per_ray is None and w > 80:
                    self._timed_render(tr, self._view_camera(c2w, 80, max(1, round(80 * h / w))))
                left = max(budget - (time.monotonic() - t_call), 0.25 * budget)
                rw, rh = budget_size(w, h, self._render_cost.seconds_per_ray, left)
                # coarse to fine against the deadline: a view costlier than predicted stops after its last
                # complete lattice (a half or a quarter of rw x rh) instead of running late (budget.py)
                order, counts = lattice_order(rw, rh)
                out = self._timed_render(tr, self._view_camera(c2w, rw, rh), pixel_order=order,
                                         deadline=time.monotonic() + 0.85 * left, min_pixels=counts[0],
                                         chunk=DEADLINE_CHUNK)
                out = lattice_image({"rgb": out["rgb"], "depth": out["depth"]}, int(out["rendered_pixels"]), counts)
                rh, rw = out["rgb"].shape[:2]
            if (rw, rh) != (w, h):
                out = upsample_render({"rgb": out["rgb"], "depth": out["depth"]}, h, w)
        return {"rgb": (out["rgb"].clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy(),
                "depth": out["depth"].numpy(), "rendered_size": (rw, rh)}

    def export_mesh(self, path: Path, cfg=None, kind: str = "poisson", progress=None):
        """Export the current map (``kind`` poisson | pointcloud, :mod:`nerf_mapping.export.mesh`) to ``path``, in
        the map frame at the refined poses. Training pauses only while the field is copied; the export itself
        runs on the caller's thread beside training. Returns the exporter's ``ExportResult``."""
        from nerf_mapping.export.mesh import MeshExportConfig, export_geometry, snapshot

        cfg = (cfg or MeshExportConfig()).validate()
        with self._state_lock:
            tr = self.trainer
            if len(tr.frames) == 0:
                raise ValueError("the map has no keyframes yet: nothing to export")
            snap = snapshot(tr)
        return export_geometry(snap, path, cfg, kind, progress)

    # ------------------------------------------------------------------------------------------------ poses
    def _refined_c2w(self, tr: Trainer, fid: int, c2w: torch.Tensor) -> torch.Tensor:
        """Model c2w of keyframe ``fid`` after pose refinement (unchanged when refinement is off)."""
        if not tr.pose.enabled or fid >= tr.pose.params.shape[0]:
            return c2w
        with torch.no_grad():
            return tr.pose(c2w[None], torch.tensor([fid]))[0]

    def _snapshot_pose(self, tr: Trainer):
        """[F,3,4] float64 camera-frame corrections of every frame id of ``tr`` (None when refinement is off), read
        under the trainer lock (the training thread updates and grows the parameters inside its steps)."""
        if not tr.pose.enabled:
            return None
        with tr.lock, torch.no_grad():
            d = tr.pose.all_deltas().detach().double().numpy().copy()
        self._pose_snap = (tr, d)
        return d

    def _pose_deltas(self, tr: Trainer):
        """The latest corrections snapshot of ``tr`` (taken now when there is none, e.g. right after a load)."""
        if not tr.pose.enabled:
            return None
        snap = self._pose_snap
        if snap is not None and snap[0] is tr:
            return snap[1]
        return self._snapshot_pose(tr)

    def _implied_map_odom(self, tr: Trainer, entries) -> dict[int, np.ndarray]:
        """T_map_odom implied by each keyframe of ``entries`` [(frame id, Keyframe)]: its refined map pose times the
        inverse of its raw odometry camera pose. A keyframe the trainer has not seen yet implies the drift estimate
        it was inserted with."""
        d = self._pose_deltas(tr)
        out: dict[int, np.ndarray] = {}
        todo = []
        for fid, kf in entries:
            if d is None or fid >= d.shape[0]:
                out[fid] = kf.T_map_odom
            else:
                todo.append((fid, kf))
        if todo:
            c2w = np.stack([optical_pose_to_model_c2w(drift.apply_drift(kf.T_map_odom, kf.T_odom_cam))
                            for _, kf in todo]).astype(np.float64)
            deltas = np.stack([d[fid] for fid, _ in todo])
            refined = apply_deltas(torch.from_numpy(c2w), torch.from_numpy(deltas)).numpy()
            for (fid, kf), r in zip(todo, refined):
                out[fid] = drift.implied_map_odom(model_c2w_to_optical_pose(r), kf.T_odom_cam)
        return out

    def _drift_estimate(self, tr: Trainer) -> np.ndarray:
        if not self.kf_history:
            return np.eye(4)
        fid, kf = self.kf_history[-1]
        return drift.drift_estimate(self._implied_map_odom(tr, [(fid, kf)]), [fid])

    def drift_estimate(self) -> np.ndarray:
        """Current best T_map_odom (4x4): the one implied by the newest keyframe (identity before any)."""
        with self._state_lock:
            return self._drift_estimate(self.trainer)

    def pose_state(self):
        """The single source of refined poses: (odometry path [(stamp, T_odom_base)], refined path
        [(stamp, T_map_base)], T_map_odom 4x4). Each keyframe of the refined path is moved by its own implied
        map->odom; map->odom itself comes from the newest keyframe."""
        with self._state_lock:
            hist = list(self.kf_history)
            tr = self.trainer
        odom_path = [(kf.stamp_ns, kf.T_odom_base) for _, kf in hist]
        corrections = self._implied_map_odom(tr, hist)
        T_map_odom = drift.drift_estimate(corrections, [fid for fid, _ in hist])
        refined_path = drift.refined_path([(fid, kf.stamp_ns, kf.T_odom_base) for fid, kf in hist], corrections,
                                          T_map_odom)
        return odom_path, refined_path, T_map_odom

    # ------------------------------------------------------------------------------------------------ status
    def status(self) -> dict:
        """Training and input figures for a status message (``rays_per_second`` averaged since the last call)."""
        tr = self.trainer
        now = time.monotonic()
        dt = now - self._rays_t
        if dt > 0:
            self._rays_per_second = self._rays_accum / dt
        self._rays_accum, self._rays_t = 0.0, now
        st = tr.last_stats or {}
        out = {"keyframes": len(tr.frames), "images_received": self.images_received,
               "images_dropped": self.images_dropped, "steps": int(tr.step_count),
               "loss": float(st.get("loss", 0.0)), "psnr": float(st.get("psnr", 0.0)),
               "rays_per_second": float(self._rays_per_second), "training": bool(self.training_active),
               "pose_correction_rot_deg": 0.0, "pose_correction_trans": 0.0}
        deltas = self._pose_deltas(tr)
        if deltas is not None:
            ids = [i for i in list(self.kf_info) if i < deltas.shape[0]]
            if ids:
                d = deltas[ids]  # [K,3,4] learned camera-frame corrections of the live keyframes
                cos = np.clip((d[:, 0, 0] + d[:, 1, 1] + d[:, 2, 2] - 1.0) * 0.5, -1.0, 1.0)
                out["pose_correction_rot_deg"] = float(np.degrees(np.arccos(cos)).mean())
                out["pose_correction_trans"] = float(np.linalg.norm(d[:, :, 3], axis=-1).mean())
        return out

    def input_stats(self) -> dict:
        """Per-reason input counters plus totals."""
        with self._counts_lock:
            stats = dict(self.counts)
        stats.update({"images_received": self.images_received, "images_dropped": self.images_dropped,
                      "queue": len(self._queue), "keyframes": len(self.trainer.frames)})
        return stats

    # ------------------------------------------------------------------------------------------------ maps
    def save(self, path: Path, meta: dict | None = None) -> dict:
        """Write the map (:mod:`.map_io`) to ``path``; returns ``keyframes`` and ``steps`` saved."""
        with self._state_lock:
            tr = self.trainer
            meta = {**(meta or {}), **self.semantics.map_extra(tr.frames.frame_ids())}
            step = map_io.save_map(path, tr, self.kf_info, meta)
            return {"keyframes": len(tr.frames), "steps": step}

    def resume(self) -> dict | None:
        """Load the newest complete autosave of ``autosave_dir`` (torn or corrupt ones are logged and skipped);
        None when there is none."""
        if not self.cfg.autosave_dir:
            raise ValueError("resume needs autosave_dir")
        path = autosave.latest_complete(Path(self.cfg.autosave_dir), self.log)
        if path is None:
            self.log.info(f"resume: no complete autosave in {self.cfg.autosave_dir}: starting a new map")
            return None
        r = self.load(path)
        self.log.info(f"resumed from {path.name}: {r['keyframes']} keyframes, step {r['steps']}")
        return {**r, "path": str(path)}

    def autosave_now(self) -> Path:
        """Write an autosave now (OSError on disk trouble, previous saves intact)."""
        t0 = time.monotonic()
        path, step = autosave.write(self, Path(self.cfg.autosave_dir), self.cfg.autosave_keep)
        self.last_autosave = (path, step, time.monotonic() - t0)
        self.count("autosave_written")
        return path

    def _autosave_loop(self) -> None:
        """Every ``autosave_period_s`` while the map changes; on disk trouble the error is logged and counted and the
        next attempt comes after at most 10 s. A last save when the mapper stops."""
        period = self.cfg.autosave_period_s
        saved_step = int(self.trainer.step_count)
        wait = period
        while not self._stop.wait(wait):
            tr = self.trainer
            if len(tr.frames) == 0 or int(tr.step_count) == saved_step:
                wait = period
                continue
            try:
                self.autosave_now()
                saved_step = self.last_autosave[1]  # the step in the file (training goes on while it is written)
                wait = period
            except Exception as exc:  # noqa: BLE001 - disk full, unwritable: keep mapping, retry soon
                self.count("autosave_failed", f"autosave failed (the previous save is kept): {exc}")
                wait = min(period, 10.0)
        tr = self.trainer
        if len(tr.frames) and int(tr.step_count) != saved_step:
            try:
                self.autosave_now()
            except Exception as exc:  # noqa: BLE001
                self.log.warning(f"final autosave failed: {exc}")

    def load(self, path: Path) -> dict:
        """Replace the map by the one in ``path``; training continues from its step count."""
        tr, info = map_io.load_map(path, capacity=self.cfg.keyframe.capacity)
        with self._state_lock:
            self._bootstrap = []  # the loaded map brings its own extent
            self._extent_ready.set()
            self.trainer = tr
            self.kf_info = info
            self.kf_history = deque(sorted(info.items()), maxlen=HISTORY)
            self._latest_kf = max(info) if info else None
        self.semantics.on_map_loaded()  # the language field and its teacher maps follow on the semantics worker
        self._interrupt.set()  # the training thread goes on with the loaded trainer (budget counted afresh)
        return {"keyframes": len(tr.frames), "steps": int(tr.step_count)}


def pose_mode(value) -> str:
    """A pose-refinement setting -> ``PoseCorrectionConfig.mode``: false / off / none / '' mean off (YAML parses an
    unquoted off as the boolean false)."""
    if isinstance(value, bool) and value is False:
        return "off"
    v = str(value).strip().lower()
    if v in ("off", "false", "none", "no", ""):
        return "off"
    if v == "true":
        raise ValueError("training.pose_refinement: give a mode (so3xr3, se3, quat, 6d) or off, not true")
    return v
