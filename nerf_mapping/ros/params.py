"""Parameters of the ``nerf_mapper`` node: names, defaults and descriptions in one table (config/mapper.yaml mirrors
it). Nested YAML keys map to dotted parameter names (``keyframe.min_translation``)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

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
    ("odom_frame", "odom", "odometry frame"),
    ("base_frame", "base_link", "robot body frame the odometry pose refers to"),
    ("camera_frame", "", "camera optical frame ('' = the image header frame_id)"),
    ("use_tf_static", True, "take the base->camera extrinsic from /tf_static when published"),
    ("tf_wait_s", 1.0, "seconds after the first image to wait for /tf_static before using the parameter"),
    ("extrinsic_base_camera", [0.0, 0.0, 0.0, -0.5, 0.5, -0.5, 0.5],
     "base->camera optical [x, y, z, qx, qy, qz, qw] used when TF is unavailable (default: optical axes looking "
     "along base +x)"),
    ("publish_tf", True, "publish map->odom on /tf"),
    # sync
    ("odom_buffer_s", 10.0, "odometry history kept for interpolation (s)"),
    ("odom_max_gap_s", 0.25, "largest gap between the odometry samples bracketing an image (s)"),
    ("odom_tolerance_s", 0.02, "an image this close outside the buffer snaps to the end sample (s)"),
    ("sync_wait_s", 1.0, "how long an image waits for odometry newer than its stamp before it is dropped (s)"),
    ("queue_size", 64, "pending images waiting for odometry / keyframe selection (oldest dropped beyond)"),
    # keyframes
    ("keyframe.min_translation", 0.05, "metres moved since the last keyframe for a new one"),
    ("keyframe.min_rotation_deg", 5.0, "degrees turned since the last keyframe for a new one"),
    ("keyframe.min_time_s", 0.0, "minimum seconds between keyframes"),
    ("keyframe.max_time_s", 0.0, "take a keyframe after this long even without motion (0 = never)"),
    ("keyframe.blur_ratio", 0.35, "reject if Laplacian variance < ratio * running median (0 = off)"),
    ("keyframe.duplicate_threshold", 0.01, "reject if mean abs thumbnail difference < this (0 = off)"),
    ("keyframe.capacity", 200, "keyframes held for training (the most redundant is evicted beyond)"),
    ("keyframe.max_width", 320, "training resolution: wider keyframes are downscaled by an integer factor"),
    # scene / training
    ("scene_box", [-3.0, -2.5, -0.2, 3.0, 2.5, 3.0], "[xmin, ymin, zmin, xmax, ymax, zmax] in the map frame"),
    ("unbounded", False, "contract space outside scene_box (outdoor / unknown extent)"),
    ("near", 0.05, "ray near bound (m)"),
    ("far", 0.0, "ray far bound (m); 0 = scene box diagonal"),
    ("training.enabled", True, "run the background optimisation"),
    ("training.target_samples_per_step", 1 << 15, "samples per optimisation step (rays adapt)"),
    ("training.threads", 0, "torch intra-op threads (0 = torch default)"),
    ("training.max_steps", 0, "stop training after this many steps (0 = unlimited)"),
    ("training.time_budget_s", 0.0, "stop training after this many seconds (0 = unlimited, no lr decay)"),
    ("training.pose_refinement", "so3xr3",
     "joint pose refinement: off | so3xr3 | se3 | quat | 6d; new keyframes enter with the current odometry drift "
     "estimate applied (the drift spline's extrapolation when training.drift_knot_s > 0), map->odom and "
     "~/path/refined come from the refined keyframes"),
    ("training.pose_lr", 1e-4, "per-keyframe pose-correction learning rate (constant online unless "
     "training.time_budget_s is set; each keyframe gets ~2 rays per step, so a larger rate turns gradient noise into "
     "a random walk of the poses: 2.4 cm RMS in 300 steps at the offline default on the demo scene)"),
    ("training.drift_knot_s", 2.0, "odometry drift spline: one world-frame correction knot every this many seconds "
     "of keyframe time, shared by the keyframes between knots (0 = per-keyframe corrections only)"),
    ("training.drift_lr", 2e-4, "learning rate of the drift-spline knots (rad and m per step)"),
    ("training.overrides", [""], "extra TrainerConfig overrides 'dotted.key=value'"),
    # outputs
    ("output_dir", "outputs/mapper", "directory for SaveMap / ExportMesh / LoadMap files (nothing outside it)"),
    ("status_period_s", 1.0, "MapStatus / paths period (s)"),
    ("tf_period_s", 0.2, "map->odom TF period (s)"),
    ("render_period_s", 3.0, "periodic ~/rendered period (s); stretched so renders take <= 25% of training"),
    ("render_width", 80, "width of the periodic render (pixels)"),
    ("render_max_size", 1920, "largest width/height RenderView accepts"),
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


def pose_mode(value) -> str:
    """``training.pose_refinement`` -> PoseCorrectionConfig.mode: false / off / none / '' mean off."""
    if isinstance(value, bool) and value is False:
        return "off"
    v = str(value).strip().lower()
    if v in ("off", "false", "none", "no", ""):
        return "off"
    if v == "true":
        raise ValueError("training.pose_refinement: give a mode (so3xr3, se3, quat, 6d) or off, not true")
    return v


def trainer_setup(get: Callable[[str], object] | None = None):
    """The node's trainer configuration and scene from its parameters (``get(name)`` -> value; None: the defaults).
    Shared by the node, the online drift benchmark and the tests, so that they train exactly what the node trains.
    Returns (TrainerConfig, SceneSpec)."""
    from nerf_mapping.training.offline import apply_inside_out_preset, override
    from nerf_mapping.training.trainer import SceneSpec, TrainerConfig

    if get is None:
        get = defaults().__getitem__
    box = [float(x) for x in get("scene_box")]
    if len(box) != 6 or not all(math.isfinite(x) for x in box) or not all(box[i + 3] > box[i] for i in range(3)):
        raise ValueError("scene_box must be [xmin, ymin, zmin, xmax, ymax, zmax] with max > min")
    far = float(get("far")) or float(np.linalg.norm(np.subtract(box[3:], box[:3])))
    scene = SceneSpec(scene_box=[box[:3], box[3:]], unbounded=bool(get("unbounded")), near=float(get("near")), far=far)
    cfg = TrainerConfig()
    if not scene.unbounded:
        apply_inside_out_preset(cfg, scene.scene_box)  # the robot is inside the mapped volume
    cfg.target_samples_per_step = int(get("training.target_samples_per_step"))
    cfg.pose.mode = pose_mode(get("training.pose_refinement"))
    cfg.pose.lr = float(get("training.pose_lr"))
    cfg.pose.lr_final = min(cfg.pose.lr_final, cfg.pose.lr)  # decays (with a time budget), never grows
    cfg.pose.c2f = None  # no coarse-to-fine online: the run has no known end
    cfg.pose.drift_knot_s = float(get("training.drift_knot_s"))
    cfg.pose.drift_lr = float(get("training.drift_lr"))
    for item in get("training.overrides"):
        if item.strip():
            k, _, v = item.partition("=")
            override(cfg, k.strip(), v.strip())
    return cfg, scene
