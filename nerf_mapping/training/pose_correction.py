"""Learnable per-frame SE(3) pose corrections applied in the ray generator: c2w_refined = c2w @ delta(frame).

The correction is expressed in the camera frame (right-multiplied), so a zero parameter is the identity and the
gradient does not depend on where the camera is in the world.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from nerf_mapping.geometry import so3_exp


@dataclass
class PoseCorrectionConfig:
    mode: Literal["off", "so3xr3"] = "off"
    """off: poses are trusted; so3xr3: axis-angle rotation + translation per frame."""
    lr: float = 1e-3
    """Learning rate of the pose parameters (own Adam optimizer)."""
    weight_decay: float = 0.0
    """Light L2 pull of corrections towards identity."""


class PoseCorrection(nn.Module):
    def __init__(self, cfg: PoseCorrectionConfig, num_frames: int = 0):
        super().__init__()
        self.cfg = cfg
        self.params = nn.Parameter(torch.zeros(max(num_frames, 1), 6))

    @property
    def enabled(self) -> bool:
        return self.cfg.mode != "off"

    def ensure_size(self, n: int) -> bool:
        """Grow to hold ``n`` frames (new frames start at identity). Returns True when the parameter was replaced."""
        if n <= self.params.shape[0]:
            return False
        grow = torch.zeros(n - self.params.shape[0], 6)
        self.params = nn.Parameter(torch.cat([self.params.data, grow]))
        return True

    def make_optimizer(self) -> torch.optim.Optimizer | None:
        """The pose parameters' own optimizer (None when disabled)."""
        if not self.enabled:
            return None
        return torch.optim.Adam([self.params], lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def on_step(self, trainer) -> None:
        """Called by the trainer before every step (schedules, coarse-to-fine)."""

    def regularizer(self, frame_ids: torch.Tensor) -> torch.Tensor:
        return self.params.new_zeros(())

    def deltas(self, frame_ids: torch.Tensor) -> torch.Tensor:
        """[R] -> [R,3,4] camera-frame corrections."""
        p = self.params[frame_ids]
        rot = so3_exp(p[:, :3])
        return torch.cat([rot, p[:, 3:, None]], dim=-1)

    def forward(self, c2w: torch.Tensor, frame_ids: torch.Tensor) -> torch.Tensor:
        """Apply corrections. c2w [R,3,4], frame_ids [R] -> [R,3,4]."""
        if not self.enabled:
            return c2w
        d = self.deltas(frame_ids)
        rot = c2w[:, :, :3] @ d[:, :, :3]
        trans = c2w[:, :, 3:] + c2w[:, :, :3] @ d[:, :, 3:]
        return torch.cat([rot, trans], dim=-1)
