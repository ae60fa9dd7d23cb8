"""The online map's keyframes, in one owner: which images become keyframes, which keyframe is evicted when the set is
full, and how the keyframes are written to and read from a map file (core, no ROS).

:class:`KeyframeSet` holds them: :meth:`KeyframeSet.admit` inserts one into the trainer's frame store (evicting the
most redundant one beyond ``capacity``, :func:`redundancy_victim`) and keeps its record (stamp, raw odometry poses,
the drift estimate it entered with); :func:`keyframes_extra` and :func:`keyframes_from_extra` are its part of the map
file (:mod:`.map_io`). Selection (:class:`KeyframeSelector`): a frame becomes a keyframe when the camera moved enough since the last keyframe (translation or rotation) or enough
time passed, unless it is blurry (variance of the Laplacian far below the running median of recent frames) or a
near-duplicate of the last keyframe (mean absolute difference of small grey thumbnails). Accepted images are
downscaled to the training resolution (``max_width``) by area averaging, with intrinsics scaled to match.
"""
from __future__ import annotations

import dataclasses
import math
from collections import deque
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from nerf_mapping.cameras import Cameras
from nerf_mapping.geometry import model_c2w_to_optical_pose
from nerf_mapping.pose import drift
from nerf_mapping.training.frame_store import CameraRays, FrameStore

ACCEPTED = "accepted"
FIRST = "first"
TOO_CLOSE = "too_close"
BLURRY = "blurry"
DUPLICATE = "duplicate"
REVISIT = "revisit"


class Keyframe(NamedTuple):
    """Bookkeeping of one keyframe of the online map. The frame store holds it at ``T_map_odom @ T_odom_cam`` (model
    c2w); poses are 4x4 float64 ``T_parent_child``."""

    stamp_ns: int
    T_odom_base: np.ndarray  # raw odometry body pose (the odometry path)
    T_odom_cam: np.ndarray   # raw odometry camera (optical) pose = T_odom_base @ T_base_cam
    T_map_odom: np.ndarray   # drift estimate applied when the keyframe entered the map


@dataclass
class KeyframeConfig:
    min_translation: float = 0.05
    """Metres moved since the last keyframe that make a new one (either this or min_rotation_deg)."""
    min_rotation_deg: float = 5.0
    """Degrees turned since the last keyframe that make a new one."""
    min_time_s: float = 0.0
    """Minimum seconds between keyframes (rate limit; 0 = none)."""
    max_time_s: float = 0.0
    """If > 0: take a frame after this long without a keyframe even when nothing moved (0 = never)."""
    blur_ratio: float = 0.35
    """Reject a candidate whose Laplacian variance < blur_ratio * running median over recent candidates (0 = off)."""
    blur_window: int = 30
    """Recent candidates whose Laplacian variance forms the running median of the blur test."""
    duplicate_threshold: float = 0.01
    """Reject when the mean abs. thumbnail difference to the last keyframe is below this (in [0,1]; 0 disables)."""
    thumbnail_size: int = 32
    """Side of the grey thumbnails compared by the duplicate and revisit tests (pixels)."""
    revisit_threshold: float = 0.04
    """A candidate within min_translation and min_rotation_deg of a keyframe already in the store (any of them, not
    only the last) whose thumbnail differs from that keyframe's by less than this (mean abs., in [0,1]) is a
    revisit: it adds nothing the map does not have, so it is not taken (0 = off: every moving view is taken). 0.04
    keeps a looping bag at one pass of keyframes; on the RGB-D README demo it took training from ~2 to ~5 steps/s
    once the first pass was in (each admitted keyframe is carved, marked, cached and given a pose parameter and a
    teacher map while another is evicted): 25 dB after 46-48 s instead of 122 s (docs/results/online.md)."""
    capacity: int = 200
    """Keyframes held by the training set (the store evicts the most redundant one beyond this)."""
    max_width: int = 320
    """Training resolution: keyframes wider than this are downscaled (integer factor, area averaging)."""


def _gray(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image, dtype=np.float32)
    if a.ndim == 3:
        a = a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114
    return a / 255.0


def laplacian_variance(image: np.ndarray) -> float:
    """Sharpness measure: variance of the 4-neighbour Laplacian of the grey image (values in [0,1])."""
    g = _gray(image)
    if g.shape[0] < 3 or g.shape[1] < 3:
        return 0.0
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4.0 * g[1:-1, 1:-1]
    return float(lap.var())


def thumbnail(image: np.ndarray, size: int = 32) -> np.ndarray:
    """Small grey thumbnail [size*H/W, size] (area average) for duplicate tests."""
    g = torch.from_numpy(_gray(image))[None, None]
    h, w = g.shape[-2:]
    th = max(1, round(size * h / max(w, 1)))
    return F.adaptive_avg_pool2d(g, (th, size))[0, 0].numpy()


def downscale_factor(width: int, max_width: int) -> int:
    """Smallest integer factor k with width / k <= max_width (1 when max_width <= 0)."""
    if max_width <= 0 or width <= max_width:
        return 1
    return int(math.ceil(width / max_width))


def downscale_image(image: np.ndarray, factor: int) -> np.ndarray:
    """uint8 [H,W,3] -> uint8 [H//k, W//k, 3] by area averaging (crops the remainder)."""
    if factor <= 1:
        return np.ascontiguousarray(image)
    h, w = image.shape[:2]
    hh, ww = h // factor, w // factor
    a = np.asarray(image[: hh * factor, : ww * factor], dtype=np.float32)
    a = a.reshape(hh, factor, ww, factor, -1).mean(axis=(1, 3))
    return np.clip(np.round(a), 0, 255).astype(np.uint8)


def pose_distances(T0, T1) -> tuple[np.ndarray, np.ndarray]:
    """(translation distances, rotation angles in degrees) between poses ``T0`` and ``T1`` ([...,3,4] or [...,4,4],
    broadcast against each other)."""
    T0 = np.asarray(T0, dtype=np.float64)[..., :3, :4]
    T1 = np.asarray(T1, dtype=np.float64)[..., :3, :4]
    dt = np.linalg.norm(T0[..., :, 3] - T1[..., :, 3], axis=-1)
    cos = ((T0[..., :, :3] * T1[..., :, :3]).sum(axis=(-2, -1)) - 1.0) * 0.5  # trace(R0^T R1)
    return dt, np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def pose_distance(T0, T1) -> tuple[float, float]:
    """(translation distance, rotation angle in degrees) between two poses ([3,4] or [4,4])."""
    dt, dr = pose_distances(T0, T1)
    return float(dt), float(dr)


class KeyframeSelector:
    """Stateful keyframe decision. ``consider`` never stores the image; the caller adds accepted frames."""

    def __init__(self, cfg: KeyframeConfig | None = None):
        self.cfg = cfg or KeyframeConfig()
        self._sharp = deque(maxlen=max(int(self.cfg.blur_window), 1))
        self.last_pose: np.ndarray | None = None
        self.last_stamp: int | None = None
        self.last_thumb: np.ndarray | None = None
        self.counts = {ACCEPTED: 0, FIRST: 0, TOO_CLOSE: 0, BLURRY: 0, DUPLICATE: 0, REVISIT: 0}

    def consider(self, image: np.ndarray, c2w, stamp_ns: int,
                 novel: Callable[[np.ndarray, np.ndarray], bool] | None = None) -> tuple[bool, str]:
        """Decide whether (image uint8 [H,W,3], pose [3,4]/[4,4], stamp) makes a keyframe.

        Returns (accepted, reason) with reason in {first, accepted, too_close, blurry, duplicate, revisit}. An
        accepted frame becomes the new reference (call order = time order). ``novel(thumbnail, c2w)``, when given, is
        asked last: False makes the frame a revisit, which is not taken but becomes the reference of the motion
        test (the camera is there now, so the next keyframe is measured from there).
        """
        cfg = self.cfg
        if self.last_pose is not None:
            dt, dr = pose_distance(self.last_pose, c2w)
            # no reference time after a restart of the source's clock (restart_time): the time tests pass
            elapsed = (int(stamp_ns) - int(self.last_stamp)) * 1e-9 if self.last_stamp is not None else math.inf
            if elapsed < cfg.min_time_s:
                return self._count(False, TOO_CLOSE)
            moved = dt >= cfg.min_translation or dr >= cfg.min_rotation_deg
            stale = cfg.max_time_s > 0 and elapsed >= cfg.max_time_s
            if not (moved or stale):
                return self._count(False, TOO_CLOSE)
        else:
            stale = False
        # image tests only for candidates (cheap path for the many frames that did not move enough)
        if cfg.blur_ratio > 0:
            sharp = laplacian_variance(image)
            blurry = len(self._sharp) >= 5 and sharp < cfg.blur_ratio * float(np.median(self._sharp))
            self._sharp.append(sharp)
            if blurry:
                return self._count(False, BLURRY)
        first = self.last_pose is None
        # one thumbnail per candidate serves the duplicate test, the revisit test and the next reference
        th = thumbnail(image, cfg.thumbnail_size) if (cfg.duplicate_threshold > 0 or novel is not None) else None
        if not first and cfg.duplicate_threshold > 0 and self.last_thumb is not None and not stale:
            if th.shape == self.last_thumb.shape and float(np.abs(th - self.last_thumb).mean()) < cfg.duplicate_threshold:
                return self._count(False, DUPLICATE)
        if novel is not None and not novel(th, c2w):
            self._set_reference(th, c2w, stamp_ns)
            return self._count(False, REVISIT)
        self._set_reference(th, c2w, stamp_ns)
        return self._count(True, FIRST if first else ACCEPTED)

    def restart_time(self) -> None:
        """The source's clock jumped back (a looping or restarted player): forget the last keyframe's stamp, which
        lies in the future of the new clock and would otherwise hold every new frame back; its pose stays the
        reference for the motion test."""
        self.last_stamp = None

    def _count(self, ok: bool, reason: str) -> tuple[bool, str]:
        self.counts[reason] += 1
        return ok, reason

    def _set_reference(self, th, c2w, stamp_ns) -> None:
        self.last_pose = np.asarray(c2w, dtype=np.float64)[:3, :4].copy()
        self.last_stamp = int(stamp_ns)
        self.last_thumb = th if self.cfg.duplicate_threshold > 0 else None


def redundancy_victim(ids: list[int], c2w: dict[int, np.ndarray], protect: int = 1,
                      trans_scale: float = 0.1, rot_scale_deg: float = 10.0) -> int:
    """Choose the keyframe to evict: the one whose neighbours in time are closest to each other and to it (the most
    redundant view), never the first ``protect`` ids (the gauge anchor) nor the newest frame.

    Score of frame i = distance(i-1, i) + distance(i, i+1), distance = trans / trans_scale + rot / rot_scale.
    """
    ids = sorted(ids)
    if len(ids) <= protect + 1:
        return ids[-1] if len(ids) <= protect else ids[protect]
    # One vectorised pass over the consecutive pairs: the frame store calls this on every keyframe it adds once
    # full (200 poses), and the per-pair Python loop took ~40 % of the node's keyframe thread.
    T = np.stack([np.asarray(c2w[i], dtype=np.float64)[:3, :4] for i in ids])
    trans, rot = pose_distances(T[:-1], T[1:])
    d = trans / trans_scale + rot / rot_scale_deg
    # frame k: d(k-1, k) + d(k, k+1) (2 d(0, 1) for the first); never the newest (it has no successor and is the
    # freshest view)
    score = np.concatenate([[2.0 * d[0]], d[:-1] + d[1:]])
    return ids[protect + int(np.argmin(score[protect:]))]


HISTORY = 20000
"""Keyframes remembered for the odometry and refined paths (evicted keyframes stay on the paths)."""


class KeyframeSet:
    """The mapper's keyframes: selection, admission into the trainer's frame store with eviction beyond
    ``capacity``, and the per-keyframe records (frame id -> :class:`Keyframe`) that the paths, the drift estimate and
    the map file need. Not locked itself: the mapper calls it under its state lock.

    Selection knows what the map already has: besides the motion, blur and duplicate tests against the last keyframe
    (:class:`KeyframeSelector`), a candidate is a *revisit* when any keyframe in the store was taken from nearly the
    same pose (within ``min_translation`` and ``min_rotation_deg``, raw odometry poses) and looks the same (grey
    thumbnails within ``revisit_threshold``). A revisit is counted and dropped: a looping bag, a replayed capture or
    a robot driving around a room twice would otherwise add every view again (with its pose parameter, its teacher
    map and an eviction), costing training time for nothing new. Why these tests: the pose test is exact and cheap
    for the common case (a replay has the same odometry), and the thumbnail test keeps views of a scene that changed
    (moved objects, other light). A drifting robot's revisit can fall outside the pose test; it is then taken, as
    before, and eviction keeps the store bounded.
    """

    def __init__(self, cfg: KeyframeConfig):
        self.cfg = cfg
        self.selector = KeyframeSelector(cfg)
        self.info: dict[int, Keyframe] = {}
        """Live keyframes: frame id -> record."""
        self.history: deque = deque(maxlen=HISTORY)
        """(frame id, record) of every keyframe ever taken, in order (evicted ones too: they stay on the paths)."""
        self.latest: int | None = None
        """Frame id of the newest keyframe."""
        self.current: int | None = None
        """Frame id of the keyframe whose view the camera is at: the newest keyframe, or the stored one that the last
        revisit matched (a looping bag's second pass is at its first pass's keyframes, and so is its drift)."""
        self._thumbs: dict[int, np.ndarray] = {}  # frame id -> grey thumbnail, for the revisit test

    def consider(self, image: np.ndarray, T_odom_cam: np.ndarray, stamp_ns: int) -> tuple[bool, str]:
        """The selection policy (:meth:`KeyframeSelector.consider` with the revisit test when it is on)."""
        novel = self.is_novel if self.cfg.revisit_threshold > 0 else None
        return self.selector.consider(image, T_odom_cam, stamp_ns, novel=novel)

    def is_novel(self, th: np.ndarray, T_odom_cam: np.ndarray) -> bool:
        """False when a keyframe in the store sees the same view (grey thumbnail ``th``) from nearly the same pose
        (see the class)."""
        cfg = self.cfg
        if cfg.revisit_threshold <= 0 or not self.info:
            return True
        info = dict(self.info)
        ids = list(info)
        dt, dr = pose_distances(np.stack([info[i].T_odom_cam for i in ids]), T_odom_cam)
        near = np.nonzero((dt < self.selector.cfg.min_translation) & (dr < cfg.min_rotation_deg))[0]
        for k in near[np.argsort(dt[near])][:8]:  # the closest few: bounded cost however dense the store
            t = self._thumbs.get(ids[k])
            if t is not None and t.shape == th.shape and float(np.abs(t - th).mean()) < cfg.revisit_threshold:
                self.current = ids[k]
                return False
        return True

    def current_entry(self) -> tuple[int, Keyframe] | None:
        """(frame id, record) of :attr:`current` while it is live, else of the newest keyframe ever taken (None
        before any)."""
        fid = self.current
        rec = self.info.get(fid) if fid is not None else None
        if rec is not None:
            return fid, rec
        return self.history[-1] if self.history else None

    def set_min_translation(self, metres: float) -> None:
        """The motion that makes a keyframe, in map units (an automatic extent fixes the map's scale)."""
        self.selector.cfg = dataclasses.replace(self.selector.cfg, min_translation=float(metres))

    def restart_time(self) -> None:
        self.selector.restart_time()

    def admit(self, frames: FrameStore, image: np.ndarray, camera: Cameras, record: Keyframe,
              depth: torch.Tensor | None = None, ranges=None) -> int:
        """Insert ``image`` (uint8 [H,W,3] at the training resolution) seen by ``camera`` (its model c2w is where the
        frame enters the map) into ``frames`` with its range data (z-depth on its grid, range rays in its camera
        frame: :mod:`.range_input`), first evicting the most redundant keyframe when the set is full; returns the new
        frame id."""
        live = frames.frame_ids()
        while len(live) >= self.cfg.capacity:
            # the most redundant view goes (its neighbours in time are closest to it), never the first (the gauge
            # anchor of pose refinement) nor the newest: coverage of the whole run is kept, not a sliding window
            victim = redundancy_victim(live, {i: frames.camera(i).c2w[0].numpy() for i in live}, protect=1)
            frames.remove(victim)
            self.info.pop(victim, None)
            self._thumbs.pop(victim, None)
            live.remove(victim)
        fid = frames.add(torch.from_numpy(np.array(image, order="C")), camera,  # a writable copy
                         stamp=record.stamp_ns * 1e-9, depth=depth, ranges=ranges)
        self.info[fid] = record
        if self.cfg.revisit_threshold > 0:  # only the revisit test reads them
            self._thumbs[fid] = thumbnail(image, self.cfg.thumbnail_size)
        self.history.append((fid, record))
        self.latest = self.current = fid
        return fid

    def replace(self, info: dict[int, Keyframe], frames: FrameStore) -> None:
        """Take the records of a loaded map whose keyframes are in ``frames`` (its history starts with its live
        keyframes)."""
        self._thumbs = {i: thumbnail(frames.image(i).numpy(), self.cfg.thumbnail_size) for i in info} \
            if self.cfg.revisit_threshold > 0 else {}
        self.info = dict(info)
        self.history = deque(sorted(info.items()), maxlen=HISTORY)
        self.latest = self.current = max(info) if info else None


def keyframes_extra(frames: FrameStore, info: dict[int, Keyframe]) -> dict:
    """The keyframes' part of a map file: per live frame (in frame-store order) ``keyframe_ids`` (the frame ids at
    save time, which index the pose parameters), ``keyframe_stamps_ns``, ``keyframe_odom_base`` /
    ``keyframe_odom_cam`` (raw odometry body and camera poses, 4x4 float64), ``keyframe_c2w`` (model c2w in the frame
    store: the odometry pose with the drift estimate applied at insertion), ``keyframe_intrinsics`` ([fx, fy, cx,
    cy, width, height, model]), ``keyframe_distortion``, ``keyframe_images`` (uint8, training resolution) and their
    range data where any keyframe has some: ``keyframe_depths`` (z-depth or an empty tensor) and ``keyframe_ranges``
    ([N,7] origins, directions, ranges in the camera frame, or [0,7])."""
    ids = frames.frame_ids()
    if not ids:
        return {}
    cams = [frames.camera(i) for i in ids]
    return {
        "keyframe_ids": torch.tensor(ids, dtype=torch.int64),
        "keyframe_stamps_ns": torch.tensor([info[i].stamp_ns if i in info else 0 for i in ids], dtype=torch.int64),
        "keyframe_odom_base": torch.tensor(np.stack([info[i].T_odom_base if i in info else np.eye(4) for i in ids]),
                                           dtype=torch.float64),
        # raw odometry camera poses (the frame store's c2w also holds the drift correction applied at insertion)
        "keyframe_odom_cam": torch.tensor(np.stack(
            [info[i].T_odom_cam if i in info else model_c2w_to_optical_pose(c.c2w[0].numpy())
             for i, c in zip(ids, cams)]), dtype=torch.float64),
        "keyframe_c2w": torch.cat([c.c2w for c in cams]),
        "keyframe_intrinsics": torch.stack(
            [torch.cat([c.fx, c.fy, c.cx, c.cy, c.width.float(), c.height.float(), c.model.float()]) for c in cams]),
        "keyframe_distortion": torch.cat([c.distortion for c in cams]),
        "keyframe_images": [frames.image(i) for i in ids],
        **(_range_extra(frames, ids) if frames.has_range else {}),
    }


def _range_extra(frames: FrameStore, ids: list[int]) -> dict:
    depths, ranges = [], []
    for i in ids:
        d, r = frames.depth(i), frames.range_rays(i)
        depths.append(d if d is not None else torch.zeros(0))
        ranges.append(torch.cat([r.origins, r.directions, r.ranges[:, None]], 1) if r is not None
                      else torch.zeros(0, 7))
    return {"keyframe_depths": depths, "keyframe_ranges": ranges}


def keyframes_from_extra(extra: dict) -> tuple[FrameStore, dict[int, Keyframe], list[int]]:
    """Read :func:`keyframes_extra` back: (a new frame store holding the keyframes renumbered 0..K-1, frame id ->
    record, the frame ids they had when saved)."""
    frames = FrameStore()
    old_ids: list[int] = []
    info: dict[int, Keyframe] = {}
    if "keyframe_ids" not in extra:
        return frames, info, old_ids
    for j, old in enumerate(extra["keyframe_ids"].tolist()):
        k = extra["keyframe_intrinsics"][j]
        cam = Cameras.create(extra["keyframe_c2w"][j], k[0], k[1], k[2], k[3], int(k[4]), int(k[5]),
                             extra["keyframe_distortion"][j], int(k[6]))
        stamp_ns = int(extra["keyframe_stamps_ns"][j])
        depth = ranges = None
        if "keyframe_depths" in extra and extra["keyframe_depths"][j].numel() > 0:
            depth = extra["keyframe_depths"][j]
        if "keyframe_ranges" in extra and extra["keyframe_ranges"][j].shape[0] > 0:
            r = extra["keyframe_ranges"][j]
            ranges = CameraRays(r[:, :3].contiguous(), r[:, 3:6].contiguous(), r[:, 6].contiguous())
        fid = frames.add(extra["keyframe_images"][j], cam, stamp=stamp_ns * 1e-9 if stamp_ns else None,
                         depth=depth, ranges=ranges)
        old_ids.append(int(old))
        T_map_cam = model_c2w_to_optical_pose(extra["keyframe_c2w"][j].double().numpy())
        # maps saved before drift-corrected insertion: the stored pose is the raw odometry pose
        T_odom_cam = extra["keyframe_odom_cam"][j].numpy() if "keyframe_odom_cam" in extra else T_map_cam
        info[fid] = Keyframe(stamp_ns, extra["keyframe_odom_base"][j].numpy(), T_odom_cam,
                             drift.implied_map_odom(T_map_cam, T_odom_cam))
    return frames, info, old_ids
