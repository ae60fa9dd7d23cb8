"""The map's extent, decided by the mapper from what it observes (``scene_box: auto``, the default), or a box given
by the user (validated here too). No ROS.

Why not a box: a robot or handheld user does not know the extent of what they are about to map (a desk, a room, a
30 m corridor, a phone capture with a far background), and the hash grid's coordinates are fixed once training
starts: moving or rescaling the box later would invalidate every trained entry.

How the extent is chosen (:func:`auto_extent`), from the first ``bootstrap_keyframes`` keyframes (a few seconds of
mapping; the training thread starts right after):

- *Scale* ``s``: where the cameras look. The point closest to every camera's optical axis (least squares) is the
  *focus* when it is well conditioned and in front of the cameras (an object or a scene the rig circles or faces);
  ``s`` is then the median camera-focus distance. Otherwise (a rig looking along its path, turning in place) ``s``
  is the spread of the camera centres, at least ``min_radius``. The scale is relative to the capture's own units,
  so a capture in metres and one in normalised units need no parameter change.
- *Inner box*: a cube about the focus (or the centre of the cameras) holding the cameras and the focus with a
  margin; it is occupancy level 0.
- *Growth*: the field's box is the inner box scaled by ``2^field_level`` at one metric resolution (finest hash
  cell ~ the pixel footprint at distance ``s``, coarsest ~ 1/8 of the inner box); beyond it space is contracted
  (mip-NeRF 360, :mod:`nerf_mapping.fields.contraction`), so far walls, a background or the sky need no box. The
  occupancy grid has ``cascades`` levels, each twice the previous, centred on the inner box. Nothing is ever
  re-anchored or rescaled, so nothing trained is invalidated: the map "grows" by the rig reaching places that the
  fixed field already holds at full resolution, whose occupancy cells are marked seen by the keyframes that see
  them (*Visibility* below) and carved by training. Hash grids are sparse by nature (only cells near surfaces take
  table entries and gradients), so a large box costs table collisions, not memory or time per sample; the
  occupancy grid keeps the rays short whatever the box. How large depends on the capture:

  - with a focus (an object or a scene the cameras face): the scene is where they look, ``field_level`` 2 (4x the
    inner box, the cameras inside) and ``cascades`` 4, the outermost reaching into the contracted region;
  - without one (a robot or a handheld rig looking along its path: it walks on, and where to is unknown):
    ``walk_field_level`` 5 and ``walk_cascades`` 6, full resolution up to 32 inner half-sides from the start
    (32 m with the default ``min_radius`` of 1 m: a corridor, a floor of a building), contracted beyond. With the
    4x box of a focus, a corridor's far end would lie in the contracted region and beyond the cascades, mapped
    coarsely or never sampled (the corridor runs: docs/results/online.md). A rig walking further than 32 inner
    half-sides maps at the contraction's coarser resolution; nvblox-style re-anchoring (block-sparse occupancy
    following the rig) is what would lift it.
- *Visibility*: only cells that a keyframe sees can be occupied (``OccupancyGridConfig.visibility``): the rest of the
  large, contracted volume would otherwise keep an untrained field's density and be marched by every ray.
- *Marching*: cone marching at the pixel footprint (``cone_angle`` ~ ``1 / fx`` of the training images, the step
  never below the footprint at distance ``s``), so the number of samples per ray depends on the image, not on the
  units. In training, a ray's step doubles every round after its first 64 samples
  (``RenderConfig.train_fine_samples``): early in a run the seen space between the cameras and the scene is still an
  untrained haze, and at a fixed step rays spent their whole sample cap in it and never reached the scene.

The keyframe translation threshold is scaled with ``s`` once the extent is fixed (:func:`keyframe_translation`).
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

import numpy as np

from nerf_mapping.geometry.frames import strict_focus_point

AUTO = "auto"


@dataclass
class ExtentConfig:
    bootstrap_keyframes: int = 4
    """Keyframes collected before the extent is fixed (their camera centres and axes give anchor and scale)."""
    bootstrap_timeout_s: float = 5.0
    """Fix the extent this long after the first keyframe even with fewer keyframes (s of wall time)."""
    min_radius: float = 1.0
    """Smallest half side of the inner box, in map units (a rig that only turned in place or walks ahead: a
    robot's room-sized neighbourhood in metres; normalised captures have a focus and do not use it)."""
    margin: float = 1.5
    """Without a focus, the inner box holds the camera centres with this factor of margin."""
    focus_fraction: float = 0.5
    """With a focus, the inner box's half side is this fraction of the viewing distance."""
    field_level: int = 2
    """With a focus: the field's (uncontracted) box is the inner box scaled by 2^field_level."""
    cascades: int = 4
    """With a focus: occupancy levels (each twice the previous); ``field_level + 2`` reaches into the contracted
    region (a background behind the object)."""
    walk_field_level: int = 5
    """Without a focus (a rig walking or looking along its path): the field's box is the inner box scaled by
    2^walk_field_level, at the same metric resolution (32 m half-side from the start in metres)."""
    walk_cascades: int = 6
    """Without a focus: occupancy levels; ``walk_field_level + 1`` covers the field's box."""
    range_min_points: int = 500
    """With at least this many range returns (depth, LiDAR) from the bootstrap keyframes, they set the inner box
    and the scale instead of the camera axes."""
    range_percentile: float = 2.0
    """The inner box holds the returns between this percentile and 100 minus it, per axis (stray returns and far
    outliers do not inflate it)."""
    range_margin: float = 1.1
    """Margin factor on the returns' box (surfaces at its faces stay inside level 0)."""
    coarsest_cells: float = 8.0
    """Cells of the coarsest hash level across the inner box (the levels are spent where the cameras look, not on
    cells larger than a room)."""
    footprint_oversample: float = 1.0
    """Finest hash cell = pixel footprint at distance ``s`` / this."""
    step_footprints: float = 2.0
    """Marching step in pixel footprints (cone marching): 2 halves the samples per ray against 1, to fit a CPU
    budget (docs/results/online.md)."""


@dataclass
class Extent:
    """What :func:`auto_extent` decided (all in map units)."""

    centre: np.ndarray
    """[3] centre of the inner box (and of every cascade)."""
    inner_half: float
    """Half side of the inner box (occupancy level 0)."""
    scale: float
    """Scene scale ``s``: median camera-focus distance, or the camera spread."""
    focus: bool
    """Whether ``scale`` came from a well-conditioned focus point."""
    field_half: float
    """Half side of the field's box (contracted beyond)."""
    cascades: int
    base_resolution: int
    """Coarsest hash-grid resolution over the encoding's unit cube (the field's box is its middle half)."""
    max_resolution: int
    """Finest hash-grid resolution over the encoding's unit cube."""
    step_size: float
    cone_angle: float
    far: float

    def scene_box(self) -> list[list[float]]:
        c, h = self.centre, self.field_half
        return [(c - h).tolist(), (c + h).tolist()]

    def occupancy_box(self) -> list[list[float]]:
        c, h = self.centre, self.inner_half
        return [(c - h).tolist(), (c + h).tolist()]

    def summary(self) -> dict:
        return {"centre": [round(float(x), 4) for x in self.centre], "inner_half": round(self.inner_half, 4),
                "field_half": round(self.field_half, 4), "scale": round(self.scale, 4), "focus": self.focus,
                "cascades": self.cascades, "base_resolution": self.base_resolution,
                "max_resolution": self.max_resolution,
                "step_size": round(self.step_size, 5), "cone_angle": round(self.cone_angle, 6),
                "scene_box": [round(float(x), 4) for x in np.concatenate(self.scene_box())]}


def parse_scene_box(value) -> tuple[float, ...] | None:
    """``scene_box`` as given by a user: ``auto`` (or empty) -> None; six numbers (a list, or a string such as
    ``"[-3, -2.5, 0, 3, 2.5, 3]"``) -> a validated tuple. ValueError with the reason otherwise."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().strip("[]()").strip()
        if text.lower() in ("", AUTO):
            return None
        try:
            value = [float(x) for x in text.replace(",", " ").split()]
        except ValueError:
            raise ValueError(f"scene_box must be 'auto' or [xmin, ymin, zmin, xmax, ymax, zmax], got {value!r}") \
                from None
    try:
        box = tuple(float(x) for x in value)
    except (TypeError, ValueError):
        raise ValueError(f"scene_box must be 'auto' or six numbers, got {value!r}") from None
    if len(box) != 6:
        raise ValueError(f"scene_box must be 'auto' or [xmin, ymin, zmin, xmax, ymax, zmax] (6 numbers), "
                         f"got {len(box)} numbers")
    if not all(math.isfinite(x) for x in box):
        raise ValueError(f"scene_box has a non-finite value: {list(box)}")
    if not all(box[i + 3] > box[i] for i in range(3)):
        raise ValueError(f"scene_box needs max > min on every axis, got {list(box)}")
    return box


def auto_extent(centres: np.ndarray, axes: np.ndarray, fx: float, cfg: ExtentConfig | None = None,
                points: np.ndarray | None = None) -> Extent:
    """The extent from the bootstrap keyframes' camera ``centres`` [N,3], optical ``axes`` [N,3] (map frame) and the
    training images' focal length ``fx`` (pixels); ``points`` [M,3]: range returns of those keyframes (depth, LiDAR),
    when the rig has a range sensor. See the module docstring."""
    cfg = cfg or ExtentConfig()
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 3)
    axes = np.asarray(axes, dtype=np.float64).reshape(-1, 3)
    if len(centres) == 0 or not np.isfinite(centres).all() or not np.isfinite(axes).all():
        raise ValueError("auto extent needs at least one finite camera pose")
    if not (math.isfinite(fx) and fx > 0):
        raise ValueError(f"auto extent needs a positive focal length, got {fx}")
    lo, hi = centres.min(0), centres.max(0)
    spread = float((hi - lo).max()) * 0.5
    p = strict_focus_point(centres, axes)
    if p is not None:
        # cameras around an object or facing a scene: the inner box is about the focus, half the viewing distance
        # across (the cameras stand in the next levels)
        scale = float(np.median(np.linalg.norm(centres - p, axis=1)))
        centre = p
        inner = max(cfg.min_radius, cfg.focus_fraction * scale)
    else:
        scale = max(cfg.min_radius, spread)
        centre = 0.5 * (lo + hi)
        inner = max(cfg.min_radius, spread * cfg.margin)
    field_level, cascades = (cfg.field_level, cfg.cascades) if p is not None else (cfg.walk_field_level,
                                                                                     cfg.walk_cascades)
    if points is not None:
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        pts = pts[np.isfinite(pts).all(1)]
        if len(pts) >= cfg.range_min_points:
            # range returns measure the scene: the inner box holds the cameras and the bulk of the returns (robust
            # percentiles, a margin), and the scale is the measured viewing distance, not a guess from the axes
            lo_p, hi_p = np.percentile(pts, [cfg.range_percentile, 100 - cfg.range_percentile], axis=0)
            lo_b, hi_b = np.minimum(lo_p, lo), np.maximum(hi_p, hi)
            centre = 0.5 * (lo_b + hi_b)
            inner = max(cfg.min_radius, 0.5 * float((hi_b - lo_b).max()) * cfg.range_margin)
            d = np.linalg.norm(pts[:, None, :] - centres[None, :, :], axis=-1).min(1)
            scale = max(float(np.median(d)), 1e-3)
    if field_level < 0 or cascades < 1:
        raise ValueError(f"extent: field levels must be >= 0 and cascades >= 1, got {field_level}, {cascades}")
    field_half = inner * 2.0 ** field_level
    footprint = scale / fx  # one pixel at distance s
    cell = footprint / cfg.footprint_oversample
    # the contraction maps the field's box to the middle half of the encoding's unit cube: twice the cells
    cube = 4.0 * field_half  # side of the encoding's unit cube in map units
    base_res = max(16, int(round(cube / (2.0 * inner / cfg.coarsest_cells))))
    max_res = int(2 ** round(math.log2(max(cube / cell, 1.0))))
    max_res = int(min(max(max_res, 2 * base_res), 1 << 17))
    cone = cfg.step_footprints / fx
    step = cone * scale
    far = inner * 2.0 ** (cascades - 1) * math.sqrt(3.0) * 2.0
    return Extent(centre=centre, inner_half=inner, scale=scale, focus=p is not None, field_half=field_half,
                  cascades=int(cascades), base_resolution=base_res, max_resolution=max_res, step_size=step, cone_angle=cone, far=far)


def keyframe_translation(min_translation: float, extent: Extent, fraction: float = 0.02) -> float:
    """The keyframe translation threshold once the extent is known: ``min_translation`` (map units) or
    ``fraction`` of the scene scale, whichever is larger (a normalised capture whose cameras stand 4 units from the
    object takes a keyframe per 8 cm of motion, a desk capture in metres per ``min_translation``)."""
    return max(float(min_translation), fraction * extent.scale)


class ExtentBootstrap:
    """The keyframes held back while the automatic extent is not fixed yet (``ready`` is set at once for a given box
    or a loaded map). Held items are ``(image, T_odom_cam, T_odom_base, stamp_ns, camera | None)``; the mapper
    decides the extent from them (:func:`auto_extent`) once :meth:`due`, then inserts them in order."""

    def __init__(self, cfg: ExtentConfig, ready: bool = False):
        self.cfg = cfg
        self.ready = threading.Event()
        if ready:
            self.ready.set()
        self.held: list[tuple] = []
        self._t0 = 0.0

    def hold(self, item: tuple) -> None:
        if not self.held:
            self._t0 = time.monotonic()
        self.held.append(item)

    def due(self) -> bool:
        """``bootstrap_keyframes`` keyframes are held, or ``bootstrap_timeout_s`` passed since the first."""
        return (not self.ready.is_set() and bool(self.held)
                and (len(self.held) >= self.cfg.bootstrap_keyframes
                     or time.monotonic() - self._t0 >= self.cfg.bootstrap_timeout_s))

    def take(self) -> list[tuple]:
        """The held keyframes (the extent is being fixed: from now on nothing is held)."""
        held, self.held = self.held, []
        return held

    def skip(self) -> None:
        """A loaded map brings its own extent: drop what is held and stop holding."""
        self.held = []
        self.ready.set()
