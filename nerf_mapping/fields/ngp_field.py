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

    @torch.no_grad()
    def add_density_bias(self, delta: float) -> None:
        """Shift the density pre-activation everywhere by ``delta`` (sigma scales by e^delta): the dense start of a
        map whose free space range data carved (:class:`nerf_mapping.training.range.RangeSupervision`)."""
        [m for m in self.density_mlp if isinstance(m, nn.Linear)][-1].bias[0] += float(delta)

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

    # -- inference -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def infer(self, x: torch.Tensor, directions: torch.Tensor | None = None, appearance: torch.Tensor | None = None,
              want_geo: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Inference-only evaluation (no autograd): (sigma [N], rgb [N,3] if ``directions`` else None, geo [N,G] if
        ``want_geo`` else None).

        Runs the fused native kernel (``native.field_inference``: contraction, hash grid, both MLPs and the SH
        encoding per cache-sized block of samples) when the encoding uses the native kernels and the appearance is
        shared by all points ([A] or None); otherwise :meth:`density` / :meth:`color`. Both compute the same
        function (tested equal within float tolerance).
        """
        fused = self._fused_module(appearance)
        if fused is None:
            sigma, geo = self.density(x)
            rgb = self.color(geo, directions, appearance) if directions is not None else None
            return sigma, rgb, (geo if want_geo else None)
        dirs = directions.float() if directions is not None else x.new_zeros(0, 3)
        sigma, rgb, geo = fused.field_inference(
            x.float().contiguous(), dirs, **self._native_field_args(appearance, color=directions is not None),
            want_color=directions is not None, want_geo=want_geo)
        return sigma, (rgb if directions is not None else None), (geo if want_geo else None)

    @torch.no_grad()
    def infer_color(self, geo: torch.Tensor, directions: torch.Tensor,
                    appearance: torch.Tensor | None = None) -> torch.Tensor:
        """rgb [N,3] for geo features from :meth:`infer` (``want_geo``): lets a renderer run the colour MLP only for
        the samples that matter. Fused native kernel when :meth:`infer` uses it, else :meth:`color`."""
        fused = self._fused_module(appearance)
        if fused is None:
            return self.color(geo, directions, appearance)
        cw, cb = self._color_layers(appearance)
        return fused.color_inference(geo.float(), directions.float(), cw, cb, self.cfg.sh_degree)

    def _density_layers(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Density MLP weights for the native kernels, transposed to [in, out]; coarse-to-fine level weights are
        folded into the first layer (they scale its inputs)."""
        enc = self.encoding
        dens = [m for m in self.density_mlp if isinstance(m, nn.Linear)]
        w0 = dens[0].weight
        if enc.level_weights is not None:
            w0 = w0 * enc.level_weights.repeat_interleave(enc.cfg.n_features_per_level)[None, :]
        weights = [w0.t().contiguous()] + [m.weight.t().contiguous() for m in dens[1:]]
        return weights, [m.bias.contiguous() for m in dens]

    def native_render_args(self, appearance: torch.Tensor | None = None) -> dict | None:
        """The field's part of the native inference renderer's arguments (``native.render_inference``), or None
        when the fused kernels do not apply (see :meth:`_fused_module`)."""
        fused = self._fused_module(appearance)
        if fused is None or not hasattr(fused, "render_inference"):
            return None
        return self._native_field_args(appearance)

    def _native_field_args(self, appearance: torch.Tensor | None, color: bool = True) -> dict:
        """The field as the native kernels take it (``field_inference``, ``render_inference``): box, contraction,
        hash grid and both MLPs (the colour MLP's layers empty when ``color`` is False)."""
        enc = self.encoding
        dw, db = self._density_layers()
        cw, cb = self._color_layers(appearance) if color else ([], [])
        return dict(box=self.scene_box.reshape(6), unbounded=self.unbounded, table=enc.table.detach(),
                    resolutions=enc.resolutions, dense_mask=enc.dense_mask, density_w=dw, density_b=db,
                    color_w=cw, color_b=cb, sh_degree=self.cfg.sh_degree)

    def _color_layers(self, appearance: torch.Tensor | None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Colour MLP weights for the native kernels: transposed to [in, out]; the first layer keeps its geo + SH
        inputs, and a shared appearance embedding [A] becomes part of its bias."""
        col = [m for m in self.color_mlp if isinstance(m, nn.Linear)]
        n_in = self.cfg.geo_feat_dim + self.cfg.sh_degree ** 2
        b0 = col[0].bias
        if self.cfg.appearance_dim > 0 and appearance is not None:
            b0 = b0 + col[0].weight[:, n_in:] @ appearance.to(b0.dtype)
        cw = [col[0].weight[:, :n_in].t().contiguous()] + [m.weight.t().contiguous() for m in col[1:]]
        cb = [b0.contiguous()] + [m.bias.contiguous() for m in col[1:]]
        return cw, cb

    def _fused_module(self, appearance: torch.Tensor | None):
        """The native module when the fused inference kernel applies to this field and call, else None."""
        enc = self.encoding
        if enc.impl != "native" or enc.table is None or enc.table.device.type != "cpu":
            return None
        if enc.table.dtype != torch.float32 or (appearance is not None and appearance.dim() != 1):
            return None
        from nerf_mapping import native

        mod = native.load()
        return mod if mod is not None and hasattr(mod, "field_inference") else None

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
