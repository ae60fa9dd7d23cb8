"""Parameters of the ``nerf_mapper`` node: name, default and description in one table (config/mapper.yaml mirrors
it). Nested YAML keys map to dotted parameter names (``keyframe.min_translation``).

The mapping parameters' defaults are :class:`nerf_mapping.mapping.mapper.MapperConfig`'s (one place decides them;
the field docstrings there say why); :func:`mapper_config` builds that config back from the node's parameters. The
rest (topics, QoS, frames of published messages, periods) belong to the node alone. No ROS import here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from nerf_mapping.export.mesh import MeshExportConfig
from nerf_mapping.mapping.keyframes import KeyframeConfig
from nerf_mapping.mapping.extent import ExtentConfig, parse_scene_box
from nerf_mapping.mapping.mapper import MapperConfig, OnlineTrainingConfig, SyncConfig
from nerf_mapping.mapping.semantics import SemanticsConfig

_M, _K, _S, _T = MapperConfig(), KeyframeConfig(), SyncConfig(), OnlineTrainingConfig()
_E, _SEM, _X = MeshExportConfig(), SemanticsConfig(), ExtentConfig()

# (name, default, description). Types follow the default's Python type.
PARAMETERS: list[tuple[str, object, str]] = [
    # topics / inputs
    ("image_topic", "/camera/image_raw", "camera image topic (…/compressed is appended for compressed transport)"),
    ("image_transport", "raw", "raw (sensor_msgs/Image) or compressed (sensor_msgs/CompressedImage)"),
    ("camera_info_topic", "/camera/camera_info", "sensor_msgs/CameraInfo topic (intrinsics + distortion)"),
    ("odom_topic", "/odom", "odometry topic"),
    ("odom_type", "nav_msgs/Odometry", "nav_msgs/Odometry or geometry_msgs/PoseStamped (pose of base_frame)"),
    ("tf_static_topic", "/tf_static", "static TF topic for the base->camera extrinsic"),
    ("sensor_qos", "sensor_data", "QoS of sensor inputs: sensor_data (best effort) or reliable"),
    # frames
    ("map_frame", "map", "fixed frame of the map (the model's world frame)"),
    ("odom_frame", _M.odom_frame, "odometry frame"),
    ("base_frame", _M.base_frame, "robot body frame the odometry pose refers to"),
    ("camera_frame", _M.camera_frame, "camera optical frame ('' = the image header frame_id)"),
    ("use_tf_static", _M.use_tf_static, "take the base->camera extrinsic from /tf_static when published"),
    ("tf_wait_s", _M.tf_wait_s, "seconds after the first image to wait for /tf_static before using the parameter"),
    ("extrinsic_base_camera", list(_M.extrinsic_base_camera),
     "base->camera optical [x, y, z, qx, qy, qz, qw] used when TF is unavailable (default: optical axes looking "
     "along base +x)"),
    ("publish_tf", True, "publish map->odom on /tf"),
    # sync
    ("odom_buffer_s", _S.buffer_s, "odometry history kept for interpolation (s)"),
    ("odom_max_gap_s", _S.max_gap_s, "largest gap between the odometry samples bracketing an image (s)"),
    ("odom_tolerance_s", _S.tolerance_s, "an image this close outside the buffer snaps to the end sample (s)"),
    ("sync_wait_s", _S.wait_s, "how long an image waits for odometry newer than its stamp before it is dropped (s)"),
    ("queue_size", _S.queue_size, "pending images waiting for odometry / keyframe selection (oldest dropped beyond)"),
    ("time_jump_s", _S.time_jump_s, "a stamp this much older than the newest means the source restarted (looping "
     "bag): intake starts afresh, the map is kept (s)"),
    # keyframes
    ("keyframe.min_translation", _K.min_translation, "metres moved since the last keyframe for a new one"),
    ("keyframe.min_rotation_deg", _K.min_rotation_deg, "degrees turned since the last keyframe for a new one"),
    ("keyframe.min_time_s", _K.min_time_s, "minimum seconds between keyframes"),
    ("keyframe.max_time_s", _K.max_time_s, "take a keyframe after this long even without motion (0 = never)"),
    ("keyframe.blur_ratio", _K.blur_ratio, "reject if Laplacian variance < ratio * running median (0 = off)"),
    ("keyframe.duplicate_threshold", _K.duplicate_threshold, "reject if mean abs thumbnail difference < this (0 = off)"),
    ("keyframe.capacity", _K.capacity, "keyframes held for training (the most redundant is evicted beyond)"),
    ("keyframe.max_width", _K.max_width, "training resolution: wider keyframes are downscaled by an integer factor"),
    # scene / training
    ("scene_box", _M.scene_box, "[xmin, ymin, zmin, xmax, ymax, zmax] in the map frame, or auto (the extent "
     "follows the cameras, far field contracted)"),
    ("unbounded", _M.unbounded, "with a given scene_box: contract space outside it"),
    ("near", _M.near, "ray near bound (map units)"),
    ("far", _M.far, "ray far bound (map units); 0 = scene box diagonal / outermost occupancy level"),
    ("extent.bootstrap_keyframes", _X.bootstrap_keyframes, "scene_box auto: keyframes that fix the extent"),
    ("extent.bootstrap_timeout_s", _X.bootstrap_timeout_s, "scene_box auto: fix the extent this long after the "
     "first keyframe even with fewer (s)"),
    ("extent.min_radius", _X.min_radius, "scene_box auto: smallest half side of the inner box (map units)"),
    ("extent.field_level", _X.field_level, "scene_box auto, cameras facing a focus: the field's full-resolution "
     "box is the inner box x 2^field_level (contracted beyond)"),
    ("extent.cascades", _X.cascades, "scene_box auto, cameras facing a focus: occupancy levels, each twice the "
     "previous"),
    ("extent.walk_field_level", _X.walk_field_level, "scene_box auto, a rig looking along its path: the field's "
     "full-resolution box is the inner box x 2^walk_field_level"),
    ("extent.walk_cascades", _X.walk_cascades, "scene_box auto, a rig looking along its path: occupancy levels"),
    ("training.enabled", _T.enabled, "run the background optimisation"),
    ("training.target_samples_per_step", _T.target_samples_per_step, "samples per optimisation step (rays adapt)"),
    ("training.threads", _T.threads, "torch intra-op threads (0 = torch default)"),
    ("training.max_steps", _T.max_steps, "stop training after this many steps (0 = unlimited)"),
    ("training.time_budget_s", _T.time_budget_s, "stop training after this many seconds (0 = unlimited, no lr decay)"),
    ("training.pose_refinement", _T.pose_refinement,
     "joint pose refinement: off | so3xr3 | se3 | quat | 6d; new keyframes enter with the current odometry drift "
     "estimate applied (the drift spline's extrapolation when training.drift_knot_s > 0), map->odom and "
     "~/path/refined come from the refined keyframes"),
    ("training.pose_lr", _T.pose_lr, "per-keyframe pose-correction learning rate (constant online unless "
     "training.time_budget_s is set; each keyframe gets ~2 rays per step, so a larger rate turns gradient noise into "
     "a random walk of the poses)"),
    ("training.drift_knot_s", _T.drift_knot_s, "odometry drift spline: one world-frame correction knot every this many "
     "seconds of keyframe time, shared by the keyframes between knots (0 = per-keyframe corrections only)"),
    ("training.drift_lr", _T.drift_lr, "learning rate of the drift-spline knots (rad and m per step)"),
    ("training.overrides", [""], "extra TrainerConfig overrides 'dotted.key=value'"),
    # outputs
    ("output_dir", "outputs/mapper", "directory for SaveMap / ExportMesh / LoadMap files (nothing outside it)"),
    ("autosave_period_s", _M.autosave_period_s, "seconds between autosaves of the map into output_dir/autosave "
     "(atomic, checksummed, the previous save kept until the new one is complete; 0 = off)"),
    ("autosave_keep", _M.autosave_keep, "complete autosaves kept"),
    ("resume", _M.resume, "at start, continue from the newest complete autosave in output_dir/autosave"),
    ("status_period_s", 1.0, "MapStatus / paths period (s)"),
    ("tf_period_s", 0.2, "map->odom TF period (s)"),
    ("render_period_s", _M.render_period_s, "periodic ~/rendered period (s); stretched so renders take <= 10% of "
     "the time"),
    ("render_width", _M.render_width, "width of the periodic render (pixels)"),
    ("render_max_size", 1920, "largest width/height RenderView accepts"),
    ("render_budget_s", _M.render_budget_s, "RenderView answers within about this long: rendered smaller and "
     "upsampled when the recent renders' cost predicts more (0 = always full resolution)"),
    # mesh export (ExportMesh, ~/mesh)
    ("mesh.depth", _E.depth, "Poisson octree depth of ExportMesh when the request gives none (1..12)"),
    ("mesh.num_points", 50000, "rays cast over the keyframes for the mesh's surface points (half the offline "
     "exporter's default: halves the answer time beside training for a Chamfer 5 % larger, docs/results/mesh.md)"),
    ("mesh.target_triangles", _E.target_triangles, "decimate the exported mesh to this many triangles (0 = keep all)"),
    ("mesh.marker_max_triangles", 50000, "triangles of the copy published on ~/mesh for RViz (decimated when the "
     "mesh is larger; 0 = do not publish)"),
    # open-vocabulary segmentation (QuerySegmentation, ~/segmentation)
    ("semantics.teacher", _SEM.teacher, "2D teacher of the language field: '' (off) | labels (class-id images on "
     "semantics.label_topic + semantics.class_names; the demo scene's oracle) | clip (local CLIP weights)"),
    ("semantics.clip_path", _SEM.clip_path, "clip: a local Hugging Face CLIP directory (nothing is downloaded)"),
    ("semantics.class_names", _SEM.class_names, "labels: JSON file {class id: name} (the demo scene's labels.json)"),
    ("semantics.label_topic", "/camera/labels", "labels: sensor_msgs/Image mono8 class ids, same stamps as the images"),
    ("semantics.stride", _SEM.stride, "labels: label pixels per teacher-map cell"),
    ("semantics.prompt_template", _SEM.prompt_template, "labels: phrasing of class names and queries for the "
     "sentence encoder ({} = the word)"),
    ("semantics.label_wait_s", _SEM.label_wait_s, "labels: seconds a keyframe waits for its label image"),
    ("semantics.threshold", _SEM.threshold, "relevancy threshold of queries whose request gives 0"),
    ("semantics.negatives", list(_SEM.negatives), "canonical negatives of queries whose request gives none"),
    ("semantics.num_points", _SEM.num_points, "rays cast over the keyframes for the query candidates"),
    ("semantics.candidates_max_age_s", _SEM.candidates_max_age_s, "a query finding older candidates refreshes them "
     "in the background (it answers with the old ones)"),
    ("semantics.warm_after_steps", _SEM.warm_after_steps, "compute the candidates in the background once the map has "
     "trained this many steps, so the first query answers at once (0 = only when a query asks)"),
]


@dataclass
class Param:
    name: str
    default: object
    description: str


def parameter_table() -> list[Param]:
    return [Param(*p) for p in PARAMETERS]


def defaults() -> dict[str, object]:
    """{parameter name: default value}."""
    return {name: value for name, value, _ in PARAMETERS}


def mapper_config(get: Callable[[str], object] | None = None) -> MapperConfig:
    """The mapper's config from the node's parameters (``get(name)`` -> value; None: the defaults)."""
    if get is None:
        get = defaults().__getitem__
    kc = KeyframeConfig(
        min_translation=float(get("keyframe.min_translation")), min_rotation_deg=float(get("keyframe.min_rotation_deg")),
        min_time_s=float(get("keyframe.min_time_s")), max_time_s=float(get("keyframe.max_time_s")),
        blur_ratio=float(get("keyframe.blur_ratio")), duplicate_threshold=float(get("keyframe.duplicate_threshold")),
        capacity=int(get("keyframe.capacity")), max_width=int(get("keyframe.max_width")))
    sync = SyncConfig(buffer_s=float(get("odom_buffer_s")), max_gap_s=float(get("odom_max_gap_s")),
                      tolerance_s=float(get("odom_tolerance_s")), wait_s=float(get("sync_wait_s")),
                      queue_size=int(get("queue_size")), time_jump_s=float(get("time_jump_s")))
    training = OnlineTrainingConfig(
        enabled=bool(get("training.enabled")), target_samples_per_step=int(get("training.target_samples_per_step")),
        threads=int(get("training.threads")), max_steps=int(get("training.max_steps")),
        time_budget_s=float(get("training.time_budget_s")), pose_refinement=get("training.pose_refinement"),
        pose_lr=float(get("training.pose_lr")), drift_knot_s=float(get("training.drift_knot_s")),
        drift_lr=float(get("training.drift_lr")),
        overrides=tuple(str(o) for o in get("training.overrides") if str(o).strip()))
    semantics = SemanticsConfig(
        teacher=str(get("semantics.teacher")).strip(), clip_path=str(get("semantics.clip_path")),
        class_names=str(get("semantics.class_names")), stride=int(get("semantics.stride")),
        prompt_template=str(get("semantics.prompt_template")), label_wait_s=float(get("semantics.label_wait_s")),
        threshold=float(get("semantics.threshold")),
        negatives=tuple(str(n) for n in get("semantics.negatives") if str(n).strip()),
        num_points=int(get("semantics.num_points")),
        candidates_max_age_s=float(get("semantics.candidates_max_age_s")),
        warm_after_steps=int(get("semantics.warm_after_steps")))
    box = parse_scene_box(get("scene_box"))
    extent = ExtentConfig(bootstrap_keyframes=int(get("extent.bootstrap_keyframes")),
                          bootstrap_timeout_s=float(get("extent.bootstrap_timeout_s")),
                          min_radius=float(get("extent.min_radius")),
                          field_level=int(get("extent.field_level")), cascades=int(get("extent.cascades")),
                          walk_field_level=int(get("extent.walk_field_level")),
                          walk_cascades=int(get("extent.walk_cascades")))
    return MapperConfig(
        scene_box="auto" if box is None else box, extent=extent, unbounded=bool(get("unbounded")),
        near=float(get("near")),
        far=float(get("far")), odom_frame=str(get("odom_frame")), base_frame=str(get("base_frame")),
        camera_frame=str(get("camera_frame")), use_tf_static=bool(get("use_tf_static")),
        tf_wait_s=float(get("tf_wait_s")), extrinsic_base_camera=tuple(float(x) for x in get("extrinsic_base_camera")),
        render_period_s=float(get("render_period_s")), render_width=int(get("render_width")),
        render_budget_s=float(get("render_budget_s")),
        keyframe=kc, sync=sync, training=training, semantics=semantics,
        autosave_dir=str(Path(str(get("output_dir"))).expanduser().resolve() / "autosave"),
        autosave_period_s=float(get("autosave_period_s")), autosave_keep=int(get("autosave_keep")),
        resume=bool(get("resume")))
