"""The online mapper: camera images and odometry in; keyframes, a trained map, refined poses and the odometry drift
out. No ROS here: the node (:mod:`nerf_mapping.ros.mapper_node`) converts messages and calls this object, and so do
``benchmark drift``, ``benchmark online`` and the unit tests, which therefore exercise exactly what the node runs.

:class:`OnlineMapper` coordinates parts with one job each:

=================  ======================================================================================
``intake``         :class:`.intake.Intake`: image queue, odometry, intrinsics, static transforms, clock restarts,
                   per-reason drop counters (``intake.submit_image``, ``intake.add_odometry``, ...)
``range_input``    :class:`.range_input.RangeInput`: depth images and LiDAR sweeps matched to keyframes
``keyframes``      :class:`.keyframes.KeyframeSet`: selection, admission, eviction and the records saved with a map
``trainer``        :class:`~nerf_mapping.training.trainer.Trainer`: the field, the pose corrections, the frame store
``poses``          :class:`.poses.PoseState`: refined poses, drift estimate, paths
``views``          :class:`.views.Views`: periodic render, budgeted ``render_view``, mesh export
``semantics``      :class:`.semantics.OnlineSemantics`: teacher, language field, text queries
``autosaver``      :class:`.autosave.Autosaver`: periodic saves (``save``, ``load``, ``resume`` are here)
=================  ======================================================================================

Threads: the caller's (``intake.submit_image`` only enqueues; a DDS callback never decodes), the keyframe worker
(decodes, synchronises, selects, inserts), the training thread (:meth:`Trainer.train`, the periodic render between
steps), the semantics worker and the autosave thread. ``lock`` (the state lock) guards swapping the trainer (the
automatic extent, ``load``) and the keyframe records; the trainer's own lock guards its parameters against
concurrent renders. Every bad input is counted (``intake.counts``, by reason) and dropped, never fatal.

The map's extent: with ``scene_box: auto`` the first keyframes are held back until :mod:`.extent` fixes the extent
from their cameras; the trainer built before is a placeholder that holds no keyframe and never trains.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from nerf_mapping.cameras import Cameras
from nerf_mapping.config.presets import auto_extent_scene, online_config, online_scene
from nerf_mapping.geometry import optical_pose_to_model_c2w
from nerf_mapping.mapping import autosave, map_io
from nerf_mapping.mapping.config import MapperConfig
from nerf_mapping.mapping.extent import Extent, ExtentBootstrap, auto_extent, keyframe_translation
from nerf_mapping.mapping.intake import WAIT, Intake
from nerf_mapping.mapping.keyframes import Keyframe, KeyframeSet, downscale_factor, downscale_image
from nerf_mapping.mapping.poses import PoseState
from nerf_mapping.mapping.range_input import RangeInput, range_points_world
from nerf_mapping.mapping.semantics import OnlineSemantics
from nerf_mapping.mapping.views import Views
from nerf_mapping.pose import drift
from nerf_mapping.training.frame_store import FrameStore
from nerf_mapping.training.trainer import Trainer


class OnlineMapper:
    def __init__(self, cfg: MapperConfig | None = None, logger=None,
                 on_render: Callable[[np.ndarray, int], None] | None = None):
        """``logger``: anything with ``info`` / ``warning`` (a ``logging.Logger``, the node's rclpy logger; default
        ``logging.getLogger("nerf_mapping.mapper")``). ``on_render(rgb uint8 [H,W,3], stamp_ns)`` receives the periodic
        render (from the training thread). ValueError names a bad setting."""
        self.cfg = cfg = (cfg or MapperConfig()).validated()
        self.log = logger or logging.getLogger("nerf_mapping.mapper")
        if cfg.training.threads > 0:
            torch.set_num_threads(cfg.training.threads)
        self.lock = threading.RLock()
        self.keyframes = KeyframeSet(cfg.keyframe)
        self.intake = Intake(cfg, self.log, on_time_jump=self._time_jump)
        self.range_input = RangeInput(cfg.range_input, self.intake)
        """Depth images and LiDAR scans matched to keyframes (:mod:`.range_input`)."""
        self.poses = PoseState()
        self.views = Views(cfg, self, on_render)
        given = cfg.scene_box != "auto"
        self.extent: Extent | None = None
        """The automatic extent once fixed (None: a given box, or still bootstrapping)."""
        self.bootstrap = ExtentBootstrap(cfg.extent, ready=given)  # training waits for bootstrap.ready
        self.scene = online_scene(cfg.scene_box if given else (-1.0, -1.0, -1.0, 1.0, 1.0, 1.0), cfg.unbounded,
                                  cfg.near, cfg.far)
        self.trainer = Trainer(self._trainer_config(self.scene), self.scene, FrameStore(seed=cfg.training.seed))
        self._stop = threading.Event()
        self._interrupt = threading.Event()  # ends the current training run (stop, or a map loaded)
        self._threads: list[threading.Thread] = []
        self.training_active = False
        self._rays_accum, self._rays_t, self._rays_per_second = 0.0, time.monotonic(), 0.0
        self.autosaver = autosave.Autosaver(self, Path(cfg.autosave_dir), cfg.autosave_period_s, cfg.autosave_keep) \
            if cfg.autosave_dir else None
        self.semantics = OnlineSemantics(cfg.semantics, self)
        """Teacher, language field and text queries (:mod:`.semantics`); off unless ``semantics.teacher`` is set."""

    def _time_jump(self) -> None:
        self.keyframes.restart_time()
        self.range_input.clear()

    def _trainer_config(self, scene, extent: Extent | None = None):
        return online_config(scene, self.cfg.training, extent=extent, range_cfg=self.cfg.range)

    # ------------------------------------------------------------------------------------------------ extent
    @property
    def extent_ready(self) -> bool:
        """Whether the map's extent is known (a given box, a fixed automatic extent or a loaded map)."""
        return self.bootstrap.ready.is_set()

    def _maybe_fix_extent(self, force: bool = False) -> None:
        """Decide the extent from the held-back keyframes once it is due (:meth:`ExtentBootstrap.due`; ``force``:
        now, from whatever is held), build the trainer for it and insert them."""
        if not (self.bootstrap.due() or (force and self.bootstrap.held and not self.bootstrap.ready.is_set())):
            return
        with self.lock:
            if self.bootstrap.ready.is_set():
                return
            held = self.bootstrap.take()
            poses = np.stack([h[1] for h in held])  # T_odom_cam (optical): the map frame is the odometry frame here
            fx, points = [], []
            for image, T_odom_cam, _, _, camera, depth, ranges in held:
                k = downscale_factor(image.shape[1], self.cfg.keyframe.max_width)
                fx.append((float(camera.fx[0]) if camera is not None else float(self.intake.intrinsics["fx"])) / k)
                if depth is not None or ranges is not None:
                    cam = self.intake.keyframe_camera(optical_pose_to_model_c2w(T_odom_cam), 1.0 / k, camera)
                    points.append(range_points_world(cam, depth, ranges))
            pts = np.concatenate(points) if points else None
            ext = auto_extent(poses[:, :3, 3], poses[:, :3, 2], float(np.median(fx)), self.cfg.extent, points=pts)
            self.scene, self.extent = auto_extent_scene(ext, self.cfg.near), ext
            self.trainer = Trainer(self._trainer_config(self.scene, ext), self.scene, self.trainer.frames)
            self.keyframes.set_min_translation(keyframe_translation(self.cfg.keyframe.min_translation, ext))
            self.bootstrap.ready.set()
        self.log.info(f"map extent fixed from {len(held)} keyframe(s): {ext.summary()}")
        for item in held:
            self.add_keyframe(*item)

    # ------------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Resume from the newest autosave (``resume``), then start the keyframe worker, the training thread (when
        enabled), the autosave thread (when configured) and the semantics worker."""
        if self.cfg.resume:
            self.resume()
        targets = [("keyframes", self._keyframe_loop)]
        if self.autosaver is not None and self.cfg.autosave_period_s > 0:
            targets.append(("autosave", lambda: self.autosaver.run(self._stop)))
        if self.cfg.training.enabled:
            targets.append(("training", self._training_loop))
        self._threads = [threading.Thread(target=fn, name=f"nerf_mapper_{name}", daemon=True) for name, fn in targets]
        for th in self._threads:
            th.start()
        self.semantics.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._interrupt.set()
        self.intake.wake()
        self.semantics.wake()
        for th in self._threads:
            if th.is_alive():
                th.join(timeout=timeout)
        self.semantics.join(timeout)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # ------------------------------------------------------------------------------------------------ keyframes
    def _keyframe_loop(self) -> None:
        """The keyframe worker: queued images in time order -> :meth:`Intake.resolve` -> selection -> insertion."""
        while not self._stop.is_set():
            self._maybe_fix_extent()  # the bootstrap timeout, also when no new keyframe comes
            items = self.intake.pending()
            for item in items:
                if self._stop.is_set():
                    return
                if not self.process_image(item):
                    break  # waiting for odometry: later images wait too (time order)
                self.intake.done(item)
            else:
                continue
            time.sleep(0.01)

    def process_image(self, item) -> bool:
        """One queued image: False when it must wait, True when it was handled (taken as a keyframe, rejected by the
        policy, or dropped)."""
        c = self.intake.resolve(item)
        if c == WAIT:
            return False
        if c is not None:
            if self.range_input.depth_pending(c.stamp_ns) and time.monotonic() - item[4] < self.cfg.sync.wait_s:
                return False  # its depth image (same stamp) may come right after it
            ok, why = self.keyframes.consider(c.image, c.T_odom_cam, c.stamp_ns)
            self.intake.count("keyframe_" + why)
            if ok:
                k = downscale_factor(c.image.shape[1], self.cfg.keyframe.max_width)
                depth, rays = self.range_input.for_keyframe(c.stamp_ns, c.T_odom_cam,
                                                            (c.image.shape[1], c.image.shape[0]), k)
                self.add_keyframe(c.image, c.T_odom_cam, c.T_odom_base, c.stamp_ns, depth=depth, ranges=rays)
        return True

    def add_keyframe(self, image: np.ndarray, T_odom_cam: np.ndarray, T_odom_base: np.ndarray, stamp_ns: int,
                     camera: Cameras | None = None, depth: torch.Tensor | None = None, ranges=None) -> int:
        """Insert a keyframe (uint8 [H,W,3], raw odometry camera and body poses, stamp), bypassing the selection
        policy; ``camera`` gives its intrinsics (default: the camera info); ``depth`` (z-depth in metres on the
        keyframe's downscaled grid) and ``ranges`` (:class:`CameraRays` in its camera frame) its range data
        (:meth:`.range_input.RangeInput.for_keyframe`). With the drift spline it enters at its
        raw odometry pose (the spline's extrapolation is the drift estimate, applying it here as well would count
        it twice), else at the odometry pose corrected by the current drift estimate. Returns its frame id (-1 while
        it is held back for the automatic extent: it enters the map, in order, once the extent is fixed)."""
        if not self.bootstrap.ready.is_set():
            with self.lock:
                if not self.bootstrap.ready.is_set():
                    self.bootstrap.hold((image, T_odom_cam, T_odom_base, stamp_ns, camera, depth, ranges))
                    self._maybe_fix_extent()
                    return -1
        k = downscale_factor(image.shape[1], self.cfg.keyframe.max_width)
        small = downscale_image(image, k)
        with self.lock:
            tr = self.trainer
            T_map_odom = np.eye(4) if tr.pose.drift_enabled else self._drift_estimate(tr)
            cam = self.intake.keyframe_camera(optical_pose_to_model_c2w(drift.apply_drift(T_map_odom, T_odom_cam)),
                                              1.0 / k, camera)
            cam.width[:] = small.shape[1]  # exact sizes after the integer crop
            cam.height[:] = small.shape[0]
            # no trainer lock: a step samples before it sizes the pose parameters, so a frame added meanwhile is
            # sized but not trained until the next step (Trainer.step)
            record = Keyframe(int(stamp_ns), np.asarray(T_odom_base, dtype=np.float64),
                              np.asarray(T_odom_cam, dtype=np.float64), T_map_odom)
            fid = self.keyframes.admit(tr.frames, small, cam, record, depth=depth, ranges=ranges)
        self.semantics.on_keyframe(fid, stamp_ns, small, tr)
        return fid

    # ------------------------------------------------------------------------------------------------ training
    def step(self) -> dict | None:
        """One training step on the caller's thread (``benchmark drift`` ties frames to steps this way); None while
        the automatic extent waits for its bootstrap keyframes."""
        if not self.bootstrap.ready.is_set():
            return None
        tr = self.trainer
        st = tr.step()
        self._after_step_bookkeeping(tr, st)
        return st

    def _after_step_bookkeeping(self, tr: Trainer, st: dict) -> None:
        self._rays_accum += st["n_rays"]
        if tr.pose.enabled:
            self.poses.snapshot(tr)  # the pose snapshot that readers use

    def _training_loop(self) -> None:
        """The training thread: :meth:`Trainer.train` (the project's one training loop), open-ended or for the time
        budget, interrupted when a map is loaded (the loop then continues on the new trainer) or the mapper stops.
        ``training.max_steps`` is a cap on the trainer's step count, not a run length: it stops the run without
        turning on the learning-rate decay that a run length would."""
        t = self.cfg.training
        while not self._stop.is_set():
            if not self.bootstrap.ready.wait(0.1):
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
        self.views.maybe_render(tr)
        # Ingestion before training: a backlog means the keyframe worker and the message callbacks need the CPU (and
        # the GIL) more than one more step does.
        backlog = self.intake.queue_length
        if backlog > 1:
            time.sleep(0.01 * min(backlog, 20))

    def _step_failed(self, exc: Exception) -> None:
        self.intake.warn("training_step", f"training step failed: {exc!r}")  # keep mapping alive, report, back off
        time.sleep(0.5)

    # ------------------------------------------------------------------------------------------------ poses
    def _drift_estimate(self, tr: Trainer) -> np.ndarray:
        return self.poses.drift_estimate(tr, self.keyframes.current_entry())

    def drift_estimate(self) -> np.ndarray:
        """Current best T_map_odom (4x4): the one implied by the keyframe whose view the camera is at (the newest,
        or the one a revisit matched: :attr:`KeyframeSet.current`; identity before any)."""
        with self.lock:
            return self._drift_estimate(self.trainer)

    def pose_state(self):
        """The single source of refined poses: (odometry path [(stamp, T_odom_base)], refined path
        [(stamp, T_map_base)], T_map_odom 4x4) (:meth:`PoseState.paths`)."""
        with self.lock:
            hist, tr = list(self.keyframes.history), self.trainer
        return self.poses.paths(tr, hist)

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
        rot, trans = self.poses.correction_size(tr, list(self.keyframes.info))
        return {"keyframes": len(tr.frames), "images_received": self.intake.images_received,
                "images_dropped": self.intake.images_dropped, "steps": int(tr.step_count),
                "loss": float(st.get("loss", 0.0)), "psnr": float(st.get("psnr", 0.0)),
                "rays_per_second": float(self._rays_per_second), "training": bool(self.training_active),
                "pose_correction_rot_deg": rot, "pose_correction_trans": trans}

    def input_stats(self) -> dict:
        """Per-reason input counters plus totals."""
        return {**self.intake.stats(), "keyframes": len(self.trainer.frames)}

    # ------------------------------------------------------------------------------------------------ maps
    def save(self, path: Path, meta: dict | None = None) -> dict:
        """Write the map (:mod:`.map_io`) to ``path``; returns ``keyframes`` and ``steps`` saved."""
        with self.lock:
            tr = self.trainer
            meta = {**(meta or {}), **self.semantics.map_extra(tr.frames.frame_ids())}
            step = map_io.save_map(path, tr, self.keyframes.info, meta)
            return {"keyframes": len(tr.frames), "steps": step}

    def load(self, path: Path) -> dict:
        """Replace the map by the one in ``path``; training continues from its step count."""
        tr, info = map_io.load_map(path)
        with self.lock:
            self.bootstrap.skip()  # the loaded map brings its own extent
            self.trainer = tr
            self.keyframes.replace(info, tr.frames)
        self.semantics.on_map_loaded()  # the language field and its teacher maps follow on the semantics worker
        self._interrupt.set()  # the training thread goes on with the loaded trainer (budget counted afresh)
        return {"keyframes": len(tr.frames), "steps": int(tr.step_count)}

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
