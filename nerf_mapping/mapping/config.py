"""The online mapper's configuration: one typed dataclass per part, composed into :class:`MapperConfig`.

These dataclasses are the only place where a mapping default and its description live. The node declares its ROS
parameters from them (dotted field paths as names, field docstrings as descriptions: :mod:`nerf_mapping.config.params`),
``config/mapper.yaml`` is generated from them (``nerf-mapping node --write-params``), and the benchmarks and tests
construct them directly. :meth:`MapperConfig.validated` is the one place that parses and checks them (``scene_box``
included); :class:`~nerf_mapping.mapping.mapper.OnlineMapper` calls it once.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from nerf_mapping.export.mesh import MeshExportConfig
from nerf_mapping.geometry.rigid import make_pose, matrix_from_quat_xyzw
from nerf_mapping.mapping.extent import ExtentConfig, parse_scene_box
from nerf_mapping.mapping.keyframes import KeyframeConfig
from nerf_mapping.mapping.range_input import RangeInputConfig
from nerf_mapping.mapping.semantics import SemanticsConfig
from nerf_mapping.training.range import RangeConfig


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
    pose_refinement: str | bool = "so3xr3"
    """Joint pose refinement: off | so3xr3 | se3 | quat | 6d (YAML reads an unquoted off as false, which means off
    too). New keyframes enter with the current drift estimate applied; map->odom and the refined path come from the
    refined keyframes."""
    pose_lr: float = 1e-4
    """Per-keyframe pose-correction learning rate (each keyframe gets ~2 rays a step: keep it small)."""
    drift_knot_s: float = 2.0
    """Odometry drift spline: one world-frame knot every this many seconds of keyframe time (0: per-keyframe
    corrections only)."""
    drift_lr: float = 2e-4
    """Learning rate of the drift-spline knots (rad and m per step)."""
    seed: int = 0
    """Seed of the ray sampling and the field's initialisation."""
    overrides: tuple[str, ...] = ()
    """Extra trainer-config overrides ``dotted.key=value``."""


@dataclass
class MeshConfig:
    """The ExportMesh service's settings (the rest of :class:`~nerf_mapping.export.mesh.MeshExportConfig` keeps the
    offline exporter's defaults)."""

    depth: int = MeshExportConfig.depth
    """Poisson octree depth of ExportMesh when the request gives none (1..12)."""
    num_points: int = 50_000
    """Rays cast over the keyframes for the mesh's surface points: half the offline exporter's default, which
    halves the answer time beside training for a slightly coarser mesh (docs/results/mesh.md)."""
    target_triangles: int = MeshExportConfig.target_triangles
    """Decimate the exported mesh to this many triangles (0 = keep all)."""

    def export_config(self, depth: int = 0) -> MeshExportConfig:
        """The exporter's config (``depth`` > 0: a request's own octree depth), validated."""
        return MeshExportConfig(depth=int(depth) or self.depth, num_points=self.num_points,
                                target_triangles=self.target_triangles).validate()


@dataclass
class MapperConfig:
    scene_box: tuple[float, ...] | str = "auto"
    """``auto`` (default): the map's extent follows what the mapper observes (:mod:`.extent`: fixed from the first
    keyframes' cameras, far field contracted), in the capture's own units; or [xmin, ymin, zmin, xmax, ymax, zmax] in
    the map frame (the demo room's: [-3, -2.5, -0.2, 3, 2.5, 3]); the two compared on real bags:
    docs/results/online.md."""
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
    mesh: MeshConfig = field(default_factory=MeshConfig)
    semantics: SemanticsConfig = field(default_factory=SemanticsConfig)
    range: RangeConfig = field(default_factory=RangeConfig)
    """Range supervision of the map by depth images and LiDAR returns (the node's ``depth_topic`` /
    ``points_topic``), and the occupancy carving from them."""
    range_input: RangeInputConfig = field(default_factory=RangeInputConfig)
    """How depth images and LiDAR scans are matched to keyframes (:mod:`.range_input`)."""
    autosave_dir: str = field(default="", metadata={"param": False})
    """Where the map is autosaved (:mod:`.autosave`); '' = no autosave. Not a node parameter: the node autosaves
    into ``output_dir/autosave``."""
    autosave_period_s: float = 30.0
    """Seconds between autosaves (0 = off): a crash loses at most this much mapping."""
    autosave_keep: int = 2
    """Complete autosaves kept (older ones are deleted only after a newer one is complete)."""
    resume: bool = False
    """At start, continue from the newest complete autosave (the node's output_dir/autosave; a new map when there is
    none)."""

    def validated(self) -> "MapperConfig":
        """A copy with every value checked and normalised (ValueError naming the parameter otherwise): ``scene_box``
        parsed to six floats or ``"auto"``, ``training.pose_refinement`` to a mode name, the extrinsic checked."""
        box = parse_scene_box(self.scene_box)
        if self.keyframe.capacity < 2:
            raise ValueError("keyframe.capacity must be >= 2")
        if self.extent.bootstrap_keyframes < 1:
            raise ValueError("extent.bootstrap_keyframes must be >= 1")
        extrinsic_matrix(self.extrinsic_base_camera)
        if self.near <= 0 or self.far < 0 or not (math.isfinite(self.near) and math.isfinite(self.far)):
            raise ValueError(f"near must be > 0 and far >= 0, got near={self.near}, far={self.far}")
        return dataclasses.replace(
            self, scene_box="auto" if box is None else box,
            training=dataclasses.replace(self.training, pose_refinement=pose_mode(self.training.pose_refinement),
                                         overrides=tuple(o for o in self.training.overrides if str(o).strip())))


def extrinsic_matrix(v) -> np.ndarray:
    """[x, y, z, qx, qy, qz, qw] -> 4x4 (ValueError unless 7 finite numbers with a unit quaternion)."""
    v = [float(x) for x in v]
    if len(v) != 7 or not all(math.isfinite(x) for x in v):
        raise ValueError("extrinsic_base_camera must be 7 finite numbers [x, y, z, qx, qy, qz, qw]")
    q = np.array(v[3:])
    if abs(float(np.linalg.norm(q)) - 1.0) > 1e-2:
        raise ValueError("extrinsic_base_camera: the quaternion is not unit")
    return make_pose(matrix_from_quat_xyzw(q), v[:3])




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
