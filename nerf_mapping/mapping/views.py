"""What the mapper shows of its map: the periodic render of the newest keyframe, the budgeted ``render_view`` of any
camera, and mesh export. All renders go through the inference renderer (:meth:`Trainer.render`) and feed one cost
model (:class:`~nerf_mapping.rendering.budget.RenderCost`, seconds per ray) that sizes ``render_view`` to its budget.

:class:`Views` reads from its mapper only ``trainer``, ``lock`` (the state lock: the trainer and the keyframe
records are swapped under it), ``keyframes``, ``intake`` (intrinsics), ``poses`` (refined keyframe poses) and
``stopping``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from nerf_mapping.cameras import Cameras
from nerf_mapping.geometry import optical_pose_to_model_c2w
from nerf_mapping.mapping.config import MapperConfig
from nerf_mapping.rendering.budget import RenderCost, budget_size, lattice_image, lattice_order, upsample_render
from nerf_mapping.training.trainer import Trainer

RENDER_CHUNK = 1 << 12  # rays per render chunk: the trainer lock is taken per chunk (and memory is bounded by it)
DEADLINE_CHUNK = 1 << 10  # RenderView's chunks: its deadline is checked per chunk (~0.1 s of rays on an early map)


def to_uint8(rgb: torch.Tensor) -> np.ndarray:
    return (rgb.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy()


class Views:
    def __init__(self, cfg: MapperConfig, mapper, on_render: Callable[[np.ndarray, int], None] | None = None):
        """``on_render(rgb uint8 [H,W,3], stamp_ns)`` receives the periodic render (from the training thread)."""
        self.cfg = cfg
        self.m = mapper
        self.on_render = on_render
        self.render_cost = RenderCost()  # seconds per ray of the recent renders, for render_view's budget
        self._next_render = 0.0

    # ------------------------------------------------------------------------------------------------ periodic
    def maybe_render(self, tr: Trainer) -> None:
        """The periodic render of the keyframe the camera is at, called by the training thread between steps: every ``render_period_s``, stretched
        so that renders take at most 10 % of the time. Not before the first occupancy-grid update: before it the
        field is a fog that the renderer marches coarsely (bounded, but a picture of nothing)."""
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
            if not self.m.stopping:
                self.m.intake.warn("periodic_render", f"periodic render failed: {exc!r}")
        dur = time.monotonic() - t0
        self._next_render = time.monotonic() + max(self.cfg.render_period_s, 9.0 * dur)

    def latest_keyframe_view(self, width: int = 0):
        """(trainer, camera, refined c2w [3,4], stamp_ns) of the keyframe the camera is at (the newest, or the one
        the last revisit matched: :attr:`KeyframeSet.current`), the camera ``width`` pixels wide (0: the training
        resolution); None before the first keyframe."""
        m = self.m
        with m.lock:
            entry = m.keyframes.current_entry()
            if entry is None or entry[0] not in m.keyframes.info:
                return None
            fid, stamp_ns = entry[0], entry[1].stamp_ns
            tr = m.trainer
            cam = tr.frames.camera(fid)
        w = int(cam.width[0])
        factor = min(1.0, width / w) if width > 0 else 1.0
        cams = cam.scaled(factor) if factor != 1.0 else cam
        return tr, cams, m.poses.refined_c2w(tr, fid, cams.c2w[0]), stamp_ns

    def render_latest_keyframe(self, width: int = 0) -> tuple[np.ndarray, int] | None:
        """(rgb uint8 [H,W,3], stamp_ns) of the keyframe the camera is at, at its refined pose, ``width`` pixels wide
        (0: the training resolution); None before the first keyframe."""
        view = self.latest_keyframe_view(width)
        if view is None:
            return None
        tr, cams, c2w, stamp_ns = view
        out = self._timed_render(tr, cams, c2w=c2w, exclusive=False)
        return to_uint8(out["rgb"]), stamp_ns

    # ------------------------------------------------------------------------------------------------ on request
    def _timed_render(self, tr: Trainer, cam: Cameras, c2w: torch.Tensor | None = None,
                      exclusive: bool = True, **kw) -> dict[str, torch.Tensor]:
        """Render; ``exclusive`` (RenderView): the trainer lock is held for the whole render, training paused, and
        the render is timed for the cost model; otherwise (the periodic render) it interleaves with training per
        chunk of rays, and is not timed: its duration includes the training steps between its chunks, and counting
        it made RenderView plan views about half as wide as its budget allowed. ``kw``: :func:`render_camera`'s
        (``pixel_order``, ``deadline``)."""
        t0 = time.monotonic()
        out = tr.render(cam, 0, c2w=c2w, chunk=kw.pop("chunk", RENDER_CHUNK), exclusive=exclusive, **kw)
        if exclusive:
            self.render_cost.update(time.monotonic() - t0, int(out["rendered_pixels"]))
        return out

    def render_view(self, T_map_optical: np.ndarray, width: int = 0, height: int = 0,
                    max_size: int = 1920) -> dict[str, np.ndarray]:
        """Render the map from a camera (optical-frame pose in the map frame) with the camera info's intrinsics
        scaled to ``width`` x ``height`` (0: the keyframe width, height from the aspect ratio; without camera info a
        60 degree horizontal field of view). Returns ``rgb`` uint8 [H,W,3], ``depth`` float32 [H,W] (metres) and
        ``rendered_size`` (w, h): smaller than the image when ``render_budget_s`` required it (the image is then
        upsampled from it). The budget counts from the call: waiting for the running training step to end and,
        before any render has been timed, a probe of at most 80 pixels wide that measures the cost, come out of it.
        Training pauses while it renders (it would otherwise interleave and double the latency)."""
        t_call = time.monotonic()
        intake = self.m.intake
        it = intake.intrinsics or {"fx": 0.0, "width": 0, "height": 0}
        w = int(width) or int(it["width"] and min(it["width"], self.cfg.keyframe.max_width)) or 160
        h = int(height) or (round(w * it["height"] / it["width"]) if it["width"] else round(w * 0.75))
        if not (8 <= w <= max_size and 8 <= h <= max_size):
            raise ValueError(f"width/height must be within 8..{max_size}, got {w}x{h}")
        c2w = optical_pose_to_model_c2w(T_map_optical)
        tr, budget = self.m.trainer, float(self.cfg.render_budget_s)
        if budget <= 0:
            out = tr.render(intake.view_camera(c2w, w, h), 0, chunk=RENDER_CHUNK)
            rw, rh = w, h
        else:
            with tr.lock:  # waits for the running training step; training pauses until the view is rendered
                if self.render_cost.seconds_per_ray is None and w > 80:
                    self._timed_render(tr, intake.view_camera(c2w, 80, max(1, round(80 * h / w))))
                left = max(budget - (time.monotonic() - t_call), 0.25 * budget)
                rw, rh = budget_size(w, h, self.render_cost.seconds_per_ray, left)
                # coarse to fine against the deadline: a view costlier than predicted stops after its last
                # complete lattice (a half or a quarter of rw x rh) instead of running late (budget.py)
                order, counts = lattice_order(rw, rh)
                out = self._timed_render(tr, intake.view_camera(c2w, rw, rh), pixel_order=order,
                                         deadline=time.monotonic() + 0.85 * left, min_pixels=counts[0],
                                         chunk=DEADLINE_CHUNK)
                out = lattice_image({"rgb": out["rgb"], "depth": out["depth"]}, int(out["rendered_pixels"]), counts)
                rh, rw = out["rgb"].shape[:2]
            if (rw, rh) != (w, h):
                out = upsample_render({"rgb": out["rgb"], "depth": out["depth"]}, h, w)
        return {"rgb": to_uint8(out["rgb"]), "depth": out["depth"].numpy(), "rendered_size": (rw, rh)}

    def export_mesh(self, path: Path, depth: int = 0, kind: str = "poisson", progress=None):
        """Export the current map (``kind`` poisson | pointcloud, :mod:`nerf_mapping.export.mesh`) to ``path``, in
        the map frame at the refined poses, with the ``mesh`` settings (``depth`` > 0: this octree depth). Training
        pauses only while the field is copied; the export itself runs on the caller's thread beside training.
        Returns the exporter's ``ExportResult``."""
        from nerf_mapping.export.mesh import export_geometry, snapshot

        cfg = self.cfg.mesh.export_config(depth)
        with self.m.lock:
            tr = self.m.trainer
            if len(tr.frames) == 0:
                raise ValueError("the map has no keyframes yet: nothing to export")
            snap = snapshot(tr)
        return export_geometry(snap, path, cfg, kind, progress)
