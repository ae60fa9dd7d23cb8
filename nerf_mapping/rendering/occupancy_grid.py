"""Multi-level occupancy grid: the CPU empty-space skipper (nerfacc's OccGridEstimator needs CUDA).

Two verbs, as in nerfacc: ``sampling`` (march rays, emit samples only in occupied cells) and
``update_every_n_steps`` (refresh the grid from the field's density). Level 0 covers ``aabb``; level k covers the
aabb scaled by 2^k about its centre (unbounded captures use several levels with a growing step, cone marching).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from nerf_mapping.cameras import project
from nerf_mapping.rendering.marching import march_rays


@dataclass
class OccupancyGridConfig:
    resolution: int = 128
    """Cells per axis and level."""
    levels: int | None = None
    """None: 1 for bounded scenes, 4 for unbounded ones."""
    update_every: int = 16
    """Training steps between two grid updates (``update_every_n_steps``)."""
    warmup_steps: int = 64
    """Before this step every cell is re-evaluated at each update; afterwards a random subset plus occupied ones."""
    update_fraction: float = 0.125
    """After warm-up, each update evaluates this fraction of the cells at random plus as many occupied cells (on
    CPU a full 128^3 sweep costs as much as several training steps, so it is kept short)."""
    ema_decay: float = 0.95
    """Each update keeps max(decay x old, new) opacity per evaluated cell: new density shows at once, density the
    field has lost fades over a few updates."""
    impl: str = "auto"
    """Ray-marching kernel: auto (native C++ when built), native, torch (the pure-PyTorch reference)."""
    occ_thre: float = 0.01
    """A cell is occupied when its (EMA) opacity over one render step exceeds this (or the grid mean, if lower)."""
    visibility: bool = False
    """Only cells that some training frame sees can be occupied (:meth:`OccupancyGrid.mark_visible`, called for
    each new frame). An untrained field has a density of ~1 everywhere, and only cells that training rays cross
    learn otherwise: in a large or contracted volume most cells are never crossed and would stay occupied, so every
    ray (and every novel view) would march through them. Unseen space holds nothing the map can know about."""
    visibility_frames_per_step: int = 2
    """New frames a training step marks at most (the rest wait for the next steps): marking costs tens of ms a frame
    on a CPU, and a burst of keyframes (a looping bag adds many at once) would make single steps hold the trainer
    for seconds, which a RenderView or SaveMap then waits for (measured in docs/results/online.md)."""


class OccupancyGrid(nn.Module):
    def __init__(self, cfg: OccupancyGridConfig, aabb: torch.Tensor, levels: int):
        super().__init__()
        self.cfg = cfg
        self.levels = levels
        g = cfg.resolution
        self.register_buffer("aabb", aabb.detach().clone().float().reshape(6))
        self.register_buffer("density", torch.zeros(levels, g, g, g))
        # Everything starts occupied so the first steps sample the whole volume (with ``visibility``: everything seen).
        self.register_buffer("occupied", torch.ones(levels, g, g, g, dtype=torch.bool))
        if cfg.visibility:
            self.register_buffer("seen", torch.zeros(levels, g, g, g, dtype=torch.bool))
            self.occupied.zero_()
        self._gen = torch.Generator().manual_seed(0)
        self._centres: torch.Tensor | None = None  # [L*G^3, 3] cell centres (visibility), computed once

    # -- geometry of the cells -------------------------------------------------------------------------------------
    def level_boxes(self) -> torch.Tensor:
        """[L, 2, 3] min/max corner of each level."""
        lo, hi = self.aabb[:3], self.aabb[3:]
        c, h = (lo + hi) / 2, (hi - lo) / 2
        s = 2.0 ** torch.arange(self.levels, dtype=torch.float32)[:, None]
        return torch.stack([c - h * s, c + h * s], dim=1)

    def cell_centers(self, level: int, flat_idx: torch.Tensor, jitter: bool = True,
                     resolution: int | None = None) -> torch.Tensor:
        """World points in the cells ``flat_idx`` of ``level`` (random within each cell, or the centres without
        ``jitter``); ``resolution``: of a coarser lattice over the same box (cells per axis; default the grid's)."""
        g = resolution or self.cfg.resolution
        ix, iy, iz = flat_idx // (g * g), (flat_idx // g) % g, flat_idx % g
        ijk = torch.stack([ix, iy, iz], -1).float()
        off = torch.rand(ijk.shape, generator=self._gen) if jitter else torch.full_like(ijk, 0.5)
        box = self.level_boxes()[level]
        return box[0] + (ijk + off) / g * (box[1] - box[0])

    # -- verbs -------------------------------------------------------------------------------------------------------
    def sampling(
        self,
        origins: torch.Tensor,
        directions: torch.Tensor,
        near: torch.Tensor | float,
        far: torch.Tensor | float,
        step_size: float,
        cone_angle: float = 0.0,
        max_samples_per_ray: int = 1024,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Samples in occupied space. Returns packed (ray_indices [S], t_starts [S], t_ends [S]) sorted by ray."""
        n = origins.shape[0]
        t_min = torch.as_tensor(near, dtype=origins.dtype).expand(n).contiguous()
        t_max = torch.as_tensor(far, dtype=origins.dtype).expand(n).contiguous()
        return march_rays(
            origins.contiguous(), directions.contiguous(), t_min, t_max, self.occupied, self.aabb,
            step_size, cone_angle, max_samples_per_ray, impl=self.cfg.impl,
        )

    @torch.no_grad()
    def update_every_n_steps(
        self, step: int, density_fn: Callable[[torch.Tensor], torch.Tensor], step_size: float, chunk: int = 1 << 17
    ) -> bool:
        """Refresh the grid every ``cfg.update_every`` steps. ``density_fn([N,3] world) -> [N] sigma``."""
        # Not at step 0: an untrained field has near-uniform density, and thresholding it at its mean would mark a
        # random half of the cells empty.
        if step == 0 or step % self.cfg.update_every != 0:
            return False
        self.update(density_fn, step_size, all_cells=step < self.cfg.warmup_steps, chunk=chunk)
        return True

    @torch.no_grad()
    def update(self, density_fn, step_size: float, all_cells: bool = True, chunk: int = 1 << 17) -> None:
        g3 = self.cfg.resolution**3
        for lvl in range(self.levels):
            if all_cells:
                idx = torch.nonzero(self.seen[lvl].view(-1)).squeeze(1) if self.cfg.visibility else torch.arange(g3)
            else:
                n = max(1, int(g3 * self.cfg.update_fraction))
                rand = torch.randint(0, g3, (n,), generator=self._gen)
                occ = torch.nonzero(self.occupied[lvl].reshape(-1)).squeeze(1)
                if occ.numel() > n:
                    occ = occ[torch.randint(0, occ.numel(), (n,), generator=self._gen)]
                idx = torch.cat([rand, occ])
            pts = self.cell_centers(lvl, idx)
            # Opacity over one render step (cells outside larger levels scale with the level's step growth).
            occ_val = torch.cat([density_fn(p) for p in pts.split(chunk)]) * step_size
            dens = self.density[lvl].view(-1)
            dens[idx] = torch.maximum(dens[idx] * self.cfg.ema_decay, occ_val)
        # with visibility, the threshold and the occupancy consider seen cells only
        seen = self.seen if self.cfg.visibility else torch.ones_like(self.occupied)
        thre = min(self.cfg.occ_thre, float(self.density[seen].mean())) if bool(seen.any()) else 0.0
        self.occupied.copy_((self.density > thre) & seen)

    @torch.no_grad()
    def mark_visible(self, cameras, far: float) -> int:
        """Mark the cells whose centre one of ``cameras`` (a ``Cameras``, OpenGL c2w) sees within ``far`` as seen
        (and, before any density says otherwise, occupied); a margin of one cell's radius keeps cells that straddle
        the image border. Returns how many cells became seen. No-op without ``cfg.visibility``.

        Tested per block of 2x2x2 cells (the block's centre and radius): 8x fewer projections, a conservative
        superset of the per-cell test (at most one cell more at the frustum's edge). A looping bag adds keyframes
        several times a second, and per cell the marking took a large share of the node's CPU (the demo's profile:
        docs/results/online.md)."""
        if not self.cfg.visibility:
            return 0
        g = self.cfg.resolution
        b = g // 2 if g % 2 == 0 else g  # blocks per axis (odd resolutions: one cell a block)
        f = g // b
        if self._centres is None:
            idx = torch.arange(b**3)
            self._centres = torch.cat([self.cell_centers(lvl, idx, jitter=False, resolution=b)
                                       for lvl in range(self.levels)])
        boxes = self.level_boxes()
        radius = ((boxes[:, 1] - boxes[:, 0]) / b).norm(dim=-1) * 0.5  # [L] block half-diagonal per level
        rad = radius.repeat_interleave(b**3)
        vis = torch.zeros(self.levels * b**3, dtype=torch.bool)
        for i in range(len(cameras)):
            c2w = cameras.c2w[i].float()
            p = (self._centres - c2w[:, 3]) @ c2w[:, :3]  # camera frame (OpenGL: x right, y up, z back)
            depth = -p[:, 2]
            dist = p.norm(dim=-1)
            u, v = project(cameras, i, p)  # the camera's own model (distortion included)
            m = float(cameras.fx[i]) * rad / depth.clamp_min(1e-6)  # the block's radius in pixels
            w, h = float(cameras.width[i]), float(cameras.height[i])
            inside = (u > -m) & (u < w + m) & (v > -m) & (v < h + m) & (depth - rad < far)
            vis |= ((depth > 0) & inside) | (dist <= rad)  # in view, or the camera's own block
        vis = vis.view(self.levels, b, 1, b, 1, b, 1).expand(self.levels, b, f, b, f, b, f).reshape(
            self.levels, g, g, g)
        new = vis & ~self.seen
        self.seen |= vis
        self.occupied |= new
        return int(new.sum())

    def occupancy_fraction(self) -> float:
        return float(self.occupied.float().mean())
