"""Parameters of the ``nerf_mapper`` node, derived from typed config dataclasses (no ROS import here).

The node's parameters are the fields of two dataclasses, flattened to dotted names
(:func:`nerf_mapping.config.params.flatten`): :class:`NodeConfig`, what belongs to the node alone (topics, QoS,
frames of published messages, periods, output directory), and
:class:`nerf_mapping.mapping.config.MapperConfig`, everything about mapping. Each default and its description live
in the dataclass field (the docstring under it); ``config/mapper.yaml`` is generated from them
(``nerf-mapping node --write-params config/mapper.yaml``) and a test holds the two equal.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from nerf_mapping.config.params import Param, build, flatten, to_yaml
from nerf_mapping.mapping.config import MapperConfig
from nerf_mapping.viewer.config import ViewerConfig

NODE_NAME = "nerf_mapper"


@dataclass
class NodeMeshConfig:
    marker_max_triangles: int = 50_000
    """Triangles of the copy of the last ExportMesh published on ~/mesh for RViz (decimated when the mesh is
    larger; 0 = do not publish)."""


@dataclass
class NodeSemanticsConfig:
    label_topic: str = "/camera/labels"
    """With semantics.teacher labels: sensor_msgs/Image mono8 class ids, same stamps as the colour images."""


@dataclass
class NodeConfig:
    """What the node alone decides (the mapping parameters are :class:`MapperConfig`'s)."""

    image_topic: str = "/camera/image_raw"
    """Camera image topic (/compressed is appended for compressed transport)."""
    image_transport: str = "raw"
    """raw (sensor_msgs/Image) or compressed (sensor_msgs/CompressedImage)."""
    camera_info_topic: str = "/camera/camera_info"
    """sensor_msgs/CameraInfo topic (intrinsics and distortion)."""
    depth_topic: str = ""
    """Depth image topic (sensor_msgs/Image 16UC1 millimetres or 32FC1 metres, 0 / NaN / inf = no return), aligned
    to the colour camera (same stamps) unless ``depth_info_topic`` gives its own camera; '' = no depth camera."""
    depth_info_topic: str = ""
    """The depth camera's own sensor_msgs/CameraInfo when it is not the colour camera (its frame resolved through
    /tf_static); '' = the depth images are aligned to the colour camera."""
    points_topic: str = ""
    """LiDAR topic (sensor_msgs/PointCloud2: x, y, z float32/64, any layout, optional per-point time), its frame
    resolved through /tf_static to base_frame; '' = no LiDAR."""
    odom_topic: str = "/odom"
    """Odometry topic."""
    odom_type: str = "nav_msgs/Odometry"
    """nav_msgs/Odometry or geometry_msgs/PoseStamped (the pose of base_frame in odom_frame)."""
    tf_static_topic: str = "/tf_static"
    """Static TF topic for the base->camera extrinsic."""
    sensor_qos: str = "sensor_data"
    """QoS of sensor inputs: sensor_data (best effort) or reliable."""
    map_frame: str = "map"
    """Fixed frame of the map (the model's world frame)."""
    publish_tf: bool = True
    """Publish map->odom on /tf."""
    output_dir: str = "outputs/mapper"
    """Directory of SaveMap / LoadMap / ExportMesh files (nothing is written outside it) and of the autosaves
    (output_dir/autosave)."""
    status_period_s: float = 1.0
    """MapStatus, input statistics and paths period (s)."""
    tf_period_s: float = 0.2
    """map->odom TF period (s)."""
    render_max_size: int = 1920
    """Largest width or height RenderView accepts (pixels)."""
    mesh: NodeMeshConfig = field(default_factory=NodeMeshConfig)
    semantics: NodeSemanticsConfig = field(default_factory=NodeSemanticsConfig)
    viewer: ViewerConfig = field(default_factory=ViewerConfig)
    """The browser viewer (:mod:`nerf_mapping.viewer`): started when ``viewer.port`` > 0."""


RENAMED = {"odom_buffer_s": "sync.buffer_s", "odom_max_gap_s": "sync.max_gap_s",
           "odom_tolerance_s": "sync.tolerance_s", "sync_wait_s": "sync.wait_s", "queue_size": "sync.queue_size",
           "time_jump_s": "sync.time_jump_s"}
"""Parameter names of earlier releases -> today's (the node logs an error naming the new one when a file sets an old
one, which ROS would otherwise ignore silently)."""


def parameters() -> list[Param]:
    """Every node parameter: :class:`NodeConfig`'s own, then :class:`MapperConfig`'s, then the node's additions to
    the mapper's groups (``mesh.``, ``semantics.``) and its own groups (``viewer.``); ValueError on a name clash."""
    node = flatten(NodeConfig())
    params = [p for p in node if "." not in p.name] + flatten(MapperConfig()) + [p for p in node if "." in p.name]
    seen: set[str] = set()
    for p in params:
        if p.name in seen:
            raise ValueError(f"parameter {p.name!r} is declared by both NodeConfig and MapperConfig")
        seen.add(p.name)
    return params


def defaults() -> dict[str, Any]:
    """{parameter name: default value} (as declared to ROS: lists, not tuples)."""
    return {p.name: p.default for p in parameters()}


def node_config(get: Callable[[str], Any]) -> NodeConfig:
    """The node's own settings from its parameters (``get(name)`` -> value)."""
    return build(NodeConfig, get)


def mapper_config(get: Callable[[str], Any] | None = None, output_dir: str | None = None) -> MapperConfig:
    """The mapper's config from the node's parameters (``get(name)`` -> value; None: the defaults). The node
    autosaves into ``output_dir/autosave``."""
    get = get or defaults().__getitem__
    cfg = build(MapperConfig, get)
    out = output_dir if output_dir is not None else get("output_dir")
    return dataclasses.replace(cfg, autosave_dir=str(Path(str(out)).expanduser().resolve() / "autosave"))


YAML_HEADER = """\
Parameters of the nerf_mapper node, with their defaults. GENERATED from the config dataclasses
(nerf_mapping/ros/params.py NodeConfig, nerf_mapping/mapping/config.py MapperConfig):
    nerf-mapping node --write-params config/mapper.yaml
Copy this file to change values. Run: nerf-mapping node --params config/mapper.yaml
  or: python -m nerf_mapping.ros.mapper_node --ros-args --params-file config/mapper.yaml
Floats must be written with a decimal point (ROS types parameters strictly)."""


def parameters_yaml() -> str:
    """The text of ``config/mapper.yaml``."""
    return to_yaml(parameters(), NODE_NAME, YAML_HEADER)
