"""Mapping world points into the hash grid's unit cube.

Bounded scenes: an affine map of ``scene_box`` to [0, 1]^3.
Unbounded captures: mip-NeRF 360's contraction. The scene box is first mapped to [-1, 1]^3, points outside the unit
ball (L-inf norm, which keeps the inner box undistorted, as nerfstudio's SceneContraction(order=inf)) are squashed
into the radius-2 ball by ``(2 - 1/|x|) x/|x|``, then [-2, 2]^3 is mapped to [0, 1]^3.
"""
from __future__ import annotations

import torch


def normalize_to_box(x: torch.Tensor, scene_box: torch.Tensor) -> torch.Tensor:
    """[N,3] world -> [N,3] with the scene box mapped to [-1, 1]^3."""
    lo, hi = scene_box[0], scene_box[1]
    return (x - lo) / (hi - lo) * 2.0 - 1.0


def contract(x: torch.Tensor) -> torch.Tensor:
    """mip-NeRF 360 contraction with the L-inf norm: [-1,1]^3 kept, R^3 -> (-2, 2)^3."""
    mag = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-9)
    return torch.where(mag <= 1.0, x, (2.0 - 1.0 / mag) * (x / mag))


def to_unit_cube(x: torch.Tensor, scene_box: torch.Tensor, unbounded: bool) -> torch.Tensor:
    """World points [N,3] -> encoding coordinates in [0,1]^3 (bounded points outside the box leave [0,1])."""
    y = normalize_to_box(x, scene_box)
    if unbounded:
        return contract(y) * 0.25 + 0.5
    return y * 0.5 + 0.5
