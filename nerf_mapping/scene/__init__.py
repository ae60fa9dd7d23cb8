"""Built-in labeled demo scene: a small furnished room rendered with open3d raycasting (see generate.py for the
output layout). Importing this package is cheap: open3d / rosbags are imported only when generating."""

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

__all__ = [
    "CLASSES",
    "ROOM_BOX",
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
