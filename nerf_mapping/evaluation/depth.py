"""Depth metrics against a range sensor's depth maps (RGB-D datasets: ``SceneData.depths``).

Sensor depth is *z-depth* (along the optical axis), while the renderer's ``depth`` is the distance ``t`` along each
unit ray; off-centre they differ by the cosine of the ray's angle to the axis (~20 % at the corner of a 640x480
Kinect image), far more than the errors being measured. So a render is converted first: ``z = t * (-d_cam.z)`` (:func:`nerf_mapping.cameras.distance_to_z_depth`)
with ``d_cam`` the unit camera-frame ray directions (OpenGL axes: the camera looks down -z) of the same pixel
centres the renderer uses.

The headline figure is the median absolute error over *all* valid pixels of all evaluated images (not a mean of
per-image medians), in metres: robust to the sensor's flying pixels at depth edges and to the few pixels where the
colour and depth cameras disagree, and comparable across images with different hole fractions.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from nerf_mapping.cameras import Cameras, camera_directions, distance_to_z_depth, pixel_centers


def z_depth_image(ray_depth: torch.Tensor, cameras: Cameras, index: int) -> torch.Tensor:
    """A rendered ``depth`` image [H, W] of camera ``index`` (distance along unit rays, as
    :func:`nerf_mapping.rendering.renderer.render_camera` returns it) -> z-depth [H, W]."""
    w, h = int(cameras.width[index]), int(cameras.height[index])
    px, py = pixel_centers(w, h, device=ray_depth.device)
    dirs = camera_directions(cameras, torch.tensor(index), px, py)
    return distance_to_z_depth(ray_depth.reshape(-1).float(), dirs).reshape(h, w)


def depth_abs_errors(pred_z: torch.Tensor, target: torch.Tensor, world_scale: float = 1.0) -> torch.Tensor:
    """|pred_z - target| / world_scale over the pixels where ``target`` is valid (> 0 and finite).

    pred_z, target: [H, W] z-depths in scene units. Returns [P] float32 errors in metres (scene units / world_scale:
    the dataset's metres-to-scene factor)."""
    valid = torch.isfinite(target) & (target > 0)
    return ((pred_z.float()[valid] - target.float()[valid]).abs() / float(world_scale)).reshape(-1)


def median_of(errors: Iterable[torch.Tensor]) -> float:
    """The median of all errors together (NaN when there are none): the middle value, or the mean of the two middle
    values for an even count."""
    flat = [e.reshape(-1).double().cpu().numpy() for e in errors]
    flat = [e for e in flat if e.size]
    if not flat:
        return float("nan")
    return float(np.median(np.concatenate(flat)))
