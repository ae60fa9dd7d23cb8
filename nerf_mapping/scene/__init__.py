"""Built-in labeled demo scene: a small furnished room rendered with open3d raycasting, with a simulated depth camera
and spinning LiDAR on the rig (see generate.py for the output layout, sensors.py for the sensor models). Importing
this package is cheap: open3d / rosbags are imported only when generating."""

from .generate import (
    SceneConfig,
    SceneInfo,
    default_scene_dir,
    ensure_default_scene,
    generate_scene,
    ground_truth_frames,
    is_complete_scene,
)
from .layout import CLASSES, ROOM_BOX
from .mesh_io import read_labeled_ply
from .odometry import OdometryNoiseParams, OdometryNoiseResult, simulate_odometry_noise
from .sensors import DepthCameraConfig, LidarConfig, LidarScans

__all__ = [
    "CLASSES",
    "ROOM_BOX",
    "DepthCameraConfig",
    "LidarConfig",
    "LidarScans",
    "OdometryNoiseParams",
    "OdometryNoiseResult",
    "SceneConfig",
    "SceneInfo",
    "default_scene_dir",
    "ensure_default_scene",
    "generate_scene",
    "ground_truth_frames",
    "is_complete_scene",
    "read_labeled_ply",
    "simulate_odometry_noise",
]
