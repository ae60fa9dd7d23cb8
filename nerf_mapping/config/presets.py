"""Every preset and default of the trainer, in one place: :func:`offline_config` builds a ``TrainerConfig`` for a
dataset (capture kind and pose mode decide it), :func:`online_config` the online mapper's, and the benchmarks take
their data settings (:data:`BENCHMARK_DATA`) and pose-benchmark preset (:func:`pose_benchmark_preset`) from here.

Capture kinds: *object-centric* (bounded, cameras outside the box: lego, DTU) march finely and cap the hash grid at
what the images resolve; *inside-out* (cameras inside the box: a robot in a room, the online node) and *unbounded*
captures (a phone video with a background: fox) use :func:`apply_inside_out_preset`. ``--set key=value`` overrides
(:func:`nerf_mapping.config.typed.override`) apply after the preset, so they reach every knob; the effective pose mode
is known before the config is built, so it is built once.
"""
from __future__ import annotations

import copy

import math
from typing import Callable, Iterable

import torch

from nerf_mapping.config.typed import override
from nerf_mapping.training.trainer import SceneSpec, TrainerConfig

BENCHMARK_DATA = {"lego": {"downscale": 2, "background": (1.0, 1.0, 1.0), "test_every": 10},
                  "dtu": {"downscale": 1, "background": None, "test_every": 1},
                  "fox": {"downscale": 4, "background": None, "test_every": 1}}
"""Image benchmarks: training downscale, background colour (None: the dataset's) and the stride over test views."""

DTU_APPEARANCE_DIM = 16
"""Per-frame appearance embedding width of the pose benchmark on DTU (real captures; see docs/results/poses.md)."""


def capture_kind(data) -> str:
    """``"unbounded"``, ``"inside_out"`` (most cameras inside the scene box) or ``"object"``."""
    if data.unbounded:
        return "unbounded"
    return "inside_out" if _cameras_inside(data) else "object"


def apply_overrides(cfg, items: Iterable[str]) -> None:
    """Apply ``KEY=VALUE`` overrides (``--set``) in order; ValueError names the bad item."""
    for it in items:
        if not str(it).strip():
            continue
        if "=" not in it:
            raise ValueError(f"--set expects KEY=VALUE, got '{it}'")
        k, v = it.split("=", 1)
        try:
            override(cfg, k.strip(), v.strip())
        except (ValueError, AttributeError) as e:
            raise ValueError(f"--set {it}: {e}") from None


def _pose_mode_of(pose_mode: str | None, overrides: Iterable[str]) -> str:
    """The pose mode the finished config will have: ``pose_mode`` when given (it wins), else the last
    ``pose.mode=`` override, else off."""
    if pose_mode is not None:
        return pose_mode
    mode = "off"
    for it in overrides:
        k, _, v = str(it).partition("=")
        if k.strip() == "pose.mode":
            mode = v.strip()
    return mode


def offline_config(data, *, pose_mode: str | None = None, overrides: Iterable[str] = (), field_impl: str = "auto",
                   background=None, seed: int | None = None,
                   preset: Callable[[TrainerConfig], None] | None = None) -> TrainerConfig:
    """The trainer config for offline training on ``data`` (SceneData).

    Order: capture-kind defaults, ``seed``, ``preset(cfg)`` (a caller's defaults, e.g. :func:`pose_benchmark_preset`),
    the ``overrides`` (``--set``), and last ``pose_mode`` (when given it wins over ``--set pose.mode``). The hash
    grid's cap depends on whether poses are refined (:func:`image_limited_resolution`); that is decided by the final
    pose mode however it was asked for, and an explicit ``--set field.encoding.max_resolution`` still wins.
    """
    overrides = list(overrides)
    refine = _pose_mode_of(pose_mode, overrides) != "off"
    cfg = TrainerConfig()
    cfg.field.encoding.impl = field_impl
    if field_impl == "torch":
        cfg.grid.impl = "torch"  # the pure-PyTorch reference path end to end
    kind = capture_kind(data)
    if kind != "object":
        apply_inside_out_preset(cfg, data.scene_box)
    elif len(data.cameras):
        cfg.field.encoding.max_resolution = image_limited_resolution(
            data.cameras, data.scene_box, oversample=1.0 if refine else 2.0)
    if kind == "unbounded":
        cfg.render.alpha_thre = 1e-2  # far, contracted space: drop near-transparent samples from the gradient pass
    if background is not None:
        cfg.background = tuple(float(c) for c in background)
    elif data.format == "dtu":
        cfg.background = (0.0, 0.0, 0.0)
    if seed is not None:
        cfg.seed = seed
    if preset is not None:
        preset(cfg)
    apply_overrides(cfg, overrides)
    if pose_mode is not None:
        cfg.pose.mode = pose_mode
    return cfg


def pose_benchmark_preset(data, c2f=None, precondition: str | None = None) -> Callable[[TrainerConfig], None]:
    """``benchmark poses`` defaults for ``data`` (``--set`` still overrides them): the coarse-to-fine window, and on
    DTU IDR's protocol (the object alone: pixels outside the mask train towards the background) with per-frame
    appearance embeddings (a real capture whose shading changes between views)."""

    def preset(cfg: TrainerConfig) -> None:
        cfg.pose.c2f = c2f
        if data.format == "dtu":
            if data.masks is not None:
                cfg.mask_background = True
            cfg.field.appearance_dim = DTU_APPEARANCE_DIM
        if precondition:
            cfg.pose.precondition = precondition

    return preset


def parse_c2f(text: str | None) -> tuple[float, float] | None:
    """A coarse-to-fine window ``"START,END"`` (fractions of the run; ``none``/``off``/empty: None)."""
    if text is None or str(text).lower() in ("", "none", "off"):
        return None
    try:
        a, b = (float(x) for x in str(text).split(","))
    except ValueError:
        raise ValueError(f"--c2f expects START,END (fractions of the run), got '{text}'") from None
    if not (0.0 <= a <= b):
        raise ValueError(f"--c2f expects 0 <= START <= END, got '{text}'")
    return (a, b)


def online_scene(scene_box, unbounded: bool, near: float, far: float) -> SceneSpec:
    """The online mapper's scene for a given box (six floats, validated by ``MapperConfig.validated``; ``far`` 0:
    the box diagonal)."""
    box = [float(x) for x in scene_box]
    far = float(far) or float(math.dist(box[3:], box[:3]))
    return SceneSpec(scene_box=[box[:3], box[3:]], unbounded=bool(unbounded), near=float(near), far=far)


def auto_extent_scene(extent, near: float) -> SceneSpec:
    """The online mapper's scene for an automatic extent (:func:`nerf_mapping.mapping.extent.auto_extent`): the
    field's box, contracted beyond, with the inner box as occupancy level 0."""
    return SceneSpec(scene_box=extent.scene_box(), unbounded=True, near=float(near), far=float(extent.far),
                     occupancy_box=extent.occupancy_box())


def online_config(scene: SceneSpec, training, extent=None, range_cfg=None) -> TrainerConfig:
    """The online mapper's trainer config (the node, ``benchmark drift`` and the tests train exactly this) from its
    ``training`` settings (:class:`nerf_mapping.mapping.config.OnlineTrainingConfig`, validated: a pose-refinement
    mode name).

    With an automatic ``extent`` (:mod:`nerf_mapping.mapping.extent`) the marching and the hash grid follow it
    (:func:`apply_auto_extent_preset`); with a given box, the inside-out preset unless the scene is unbounded (the
    robot is inside the mapped volume). Pose refinement with a constant, small per-keyframe rate (each keyframe gets
    ~2 rays per step, so a larger one turns gradient noise into a random walk of the poses) plus the drift spline; no
    coarse-to-fine (an online run has no known end). ``range_cfg``: the range supervision
    (:class:`nerf_mapping.training.range.RangeConfig`; default its defaults). ``training.overrides`` apply last."""
    cfg = TrainerConfig()
    if range_cfg is not None:
        cfg.range = copy.deepcopy(range_cfg)
    if extent is not None:
        apply_auto_extent_preset(cfg, extent)
    elif not scene.unbounded:
        apply_inside_out_preset(cfg, scene.scene_box)
    cfg.target_samples_per_step = int(training.target_samples_per_step)
    cfg.seed = int(training.seed)
    cfg.threads = None
    cfg.pose.mode = training.pose_refinement
    cfg.pose.lr = float(training.pose_lr)
    cfg.pose.lr_final = min(cfg.pose.lr_final, cfg.pose.lr)  # decays (with a time budget), never grows
    cfg.pose.c2f = None
    cfg.pose.drift_knot_s = float(training.drift_knot_s)
    cfg.pose.drift_lr = float(training.drift_lr)
    apply_overrides(cfg, training.overrides)
    return cfg


def _cameras_inside(data) -> bool:
    c = data.cameras.c2w[:, :, 3]
    lo, hi = data.scene_box[0], data.scene_box[1]
    return bool(((c > lo) & (c < hi)).all(dim=-1).float().mean() > 0.5)


def apply_inside_out_preset(cfg: TrainerConfig, scene_box) -> None:
    """CPU settings for inside-out and unbounded captures (a robot or handheld rig in a room, a phone capture with a
    background; also the online node's default).

    Rays cross metres of mostly empty space before the first surface, and a CPU affords few samples per step, so
    the map must be cheap to march: a coarser occupancy grid refreshed often (empty space is carved within seconds),
    a step of ~1/350 of the box diagonal growing with distance (cone marching, like the pixel footprint), a capped
    number of samples per ray for the first, still-transparent steps, and a smaller hash table (finer levels are
    not resolvable at robot camera resolutions anyway).
    """
    box = torch.as_tensor(scene_box, dtype=torch.float32).reshape(2, 3)
    cfg.init_rays_per_step = 512
    cfg.grid.resolution = 64
    cfg.grid.warmup_steps = 16
    cfg.grid.update_every = 8
    cfg.render.step_size = float(torch.linalg.norm(box[1] - box[0])) / 350.0
    cfg.render.cone_angle = 1.0 / 256.0
    cfg.render.max_samples_per_ray = 256
    cfg.field.encoding.log2_hashmap_size = 17
    cfg.field.encoding.max_resolution = 1024
    cfg.target_samples_per_step = 1 << 15


def apply_auto_extent_preset(cfg: TrainerConfig, extent) -> None:
    """The inside-out CPU settings (:func:`apply_inside_out_preset`) with the marching and the hash grid of an
    automatic extent: cascaded occupancy levels about the inner box, cone marching at the pixel footprint, and the
    finest hash resolution that puts one cell per pixel footprint at the scene scale over the whole field box."""
    apply_inside_out_preset(cfg, extent.scene_box())
    cfg.grid.levels = int(extent.cascades)
    cfg.grid.visibility = True  # a large, contracted volume: only what the keyframes see can be occupied
    # early rays cross seen-but-untrained haze between the cameras and the scene: coarser steps after the first round
    # let them reach the scene within the sample cap (measured in docs/results/online.md)
    cfg.render.train_fine_samples = cfg.render.samples_per_round
    cfg.render.step_size = float(extent.step_size)
    cfg.render.cone_angle = float(extent.cone_angle)
    cfg.field.encoding.base_resolution = int(extent.base_resolution)
    cfg.field.encoding.max_resolution = int(extent.max_resolution)


def image_limited_resolution(cameras, scene_box, oversample: float = 2.0, lo: int = 128, hi: int = 2048) -> int:
    """Finest hash-grid resolution the training images of an object-centric capture can constrain.

    A pixel at the scene centre covers ``distance / focal`` scene units (medians over the cameras), so the images
    resolve about ``extent * focal / distance`` cells across the box; ``oversample`` (2: Nyquist) times that, rounded
    up to a power of two and clamped to [lo, hi]. Finer levels see no more detail, only capacity to absorb
    per-view misalignment: with joint pose refinement they let the field explain each camera's residual orbit about
    the object (the weakly observable yaw + sideways-translation direction) instead of correcting it. Hence
    ``oversample=1`` when the poses are refined (:func:`offline_config`); the measurements behind both choices are in
    docs/results/poses.md.
    """
    box = torch.as_tensor(scene_box, dtype=torch.float64).reshape(2, 3)
    centre, extent = (box[0] + box[1]) / 2, float((box[1] - box[0]).max())
    dist = torch.linalg.vector_norm(cameras.c2w[:, :3, 3].double() - centre, dim=-1).median()
    focal = torch.maximum(cameras.fx, cameras.fy).double().median()
    cells = oversample * extent * float(focal) / max(float(dist), 1e-9)
    return int(min(max(2 ** math.ceil(math.log2(max(cells, 1.0))), lo), hi))
