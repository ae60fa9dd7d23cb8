"""Instant-NGP radiance field: hash grid -> density MLP (+ geometry features) -> SH view encoding -> color MLP.

Density is never conditioned on the view direction. Extra heads (e.g. language features) read *detached* geometry
features so that training them can never deform the geometry (see ``NGPField.add_head``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from nerf_mapping.fields.contraction import to_unit_cube
from nerf_mapping.fields.hash_encoding import HashEncoding, HashEncodingConfig
from nerf_mapping.fields.sh_encoding import sh_encode


@dataclass
class FieldConfig:
    encoding: HashEncodingConfig = field(default_factory=HashEncodingConfig)
    """The multiresolution hash encoding of positions."""
    hidden_dim: int = 64
    """Width of the density MLP's single hidden layer."""
    geo_feat_dim: int = 15
    """Geometry features passed from the density MLP to the color MLP."""
    color_hidden_dim: int = 64
    """Width of the color MLP's hidden layers."""
    color_hidden_layers: int = 2
    """Hidden layers of the color MLP."""
    sh_degree: int = 4
    """Spherical-harmonics bands for the view direction (degree**2 features)."""
    appearance_dim: int = 0
    """Per-frame appearance embedding fed to the color MLP (see :mod:`nerf_mapping.fields.appearance`); 0 = off. Density never
    sees it."""


class _TruncExp(torch.autograd.Function):
    """exp() whose gradient is clamped: Instant-NGP's density activation, stable with large pre-activations."""

    @staticmethod
    def forward(ctx, x):  # noqa: D102
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    return _TruncExp.apply(x)


def mlp(d_in: int, d_hidden: int, n_hidden: int, d_out: int) -> nn.Sequential:
    """ReLU MLP with ``n_hidden`` hidden layers of width ``d_hidden`` and a linear output layer."""
    layers: list[nn.Module] = []
    d = d_in
    for _ in range(n_hidden):
        layers += [nn.Linear(d, d_hidden), nn.ReLU(inplace=True)]
        d = d_hidden
    layers.append(nn.Linear(d, d_out))
    return nn.Sequential(*layers)


class NGPField(nn.Module):
    """What is at a 3D point: density, view-dependent color, and optional feature heads."""

    def __init__(self, cfg: FieldConfig, scene_box: torch.Tensor, unbounded: bool):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("scene_box", scene_box.detach().clone().float().reshape(2, 3))
        self.unbounded = bool(unbounded)
        self.encoding = HashEncoding(cfg.encoding)
        self.density_mlp = mlp(self.encoding.n_output_dims, cfg.hidden_dim, 1, 1 + cfg.geo_feat_dim)
        d_color = cfg.geo_feat_dim + cfg.sh_degree**2 + cfg.appearance_dim
        self.color_mlp = mlp(d_color, cfg.color_hidden_dim, cfg.color_hidden_layers, 3)
        self.heads = nn.ModuleDict()

    def unit_coords(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """World [N,3] -> ([N,3] coordinates in [0,1]^3, [N] bool inside the modelled volume)."""
        u = to_unit_cube(x, self.scene_box, self.unbounded)
        inside = ((u >= 0.0) & (u <= 1.0)).all(dim=-1)
        return u.clamp(0.0, 1.0), inside

    def density(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: x [N,3] world points. Returns: sigma [N] (>= 0, zero outside a bounded box), geo_feat [N,G]."""
        u, inside = self.unit_coords(x)
        h = self.density_mlp(self.encoding(u))
        sigma = trunc_exp(h[:, 0] - 1.0) * inside.to(h.dtype)
        return sigma, h[:, 1:]

    def color(self, geo_feat: torch.Tensor, directions: torch.Tensor,
              appearance: torch.Tensor | None = None) -> torch.Tensor:
        """Args: geo_feat [N,G], directions [N,3] unit, appearance [N,A] or [A] (``cfg.appearance_dim`` > 0; None =
        zeros). Returns rgb [N,3] in [0,1]."""
        parts = [geo_feat, sh_encode(directions, self.cfg.sh_degree)]
        a = self.cfg.appearance_dim
        if a > 0:
            if appearance is None:
                appearance = geo_feat.new_zeros(a)
            parts.append(appearance.to(geo_feat.dtype).expand(geo_feat.shape[0], a))
        return torch.sigmoid(self.color_mlp(torch.cat(parts, dim=-1)))

    def forward(self, x: torch.Tensor, directions: torch.Tensor,
                appearance: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        sigma, geo = self.density(x)
        return sigma, self.color(geo, directions, appearance)

    # -- extra heads ---------------------------------------------------------------------------------------------
    def add_head(self, name: str, head: nn.Module) -> None:
        """Register a feature head ``head(unit_coords [N,3], geo_feat_detached [N,G]) -> [N,D]``.

        Heads receive detached inputs, so their losses cannot change density or color.
        """
        self.heads[name] = head

    def features(self, x: torch.Tensor, geo_feat: torch.Tensor, names: list[str] | None = None) -> dict[str, torch.Tensor]:
        u, _ = self.unit_coords(x)
        out = {}
        for name, head in self.heads.items():
            if names is None or name in names:
                out[name] = head(u.detach(), geo_feat.detach())
        return out
