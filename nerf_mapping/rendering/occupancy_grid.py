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
        # range sensing (:meth:`carve`): cells a ray crossed in front of its return, and cells holding a return
        self.register_buffer("free", torch.zeros(levels, g, g, g, dtype=torch.bool))
        self.register_buffer("hit", torch.zeros(levels, g, g, g, dtype=torch.bool))
        self._range_seen = False  # any range evidence yet (set by carving, read back by load_state_dict)
        self._hit_near_cache: torch.Tensor | None = None
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
        self._apply_range()

    def _apply_range(self) -> None:
        """Range evidence overrides the density: a cell a range ray crossed (and no return fell in) is empty, a cell
        holding a return is occupied (:meth:`carve`)."""
        if self._range_seen:
            self.occupied &= ~(self.free & ~self._hit_near())
            self.occupied |= self.hit

    def _hit_near(self) -> torch.Tensor:
        """Hit cells dilated by one cell: a ray grazing a surface crosses the cells beside the return of another ray
        in front of its own return, and must not carve them (the surface between two sparse returns)."""
        if getattr(self, "_hit_near_cache", None) is None:
            self._hit_near_cache = torch.nn.functional.max_pool3d(
                self.hit.float()[:, None], 3, stride=1, padding=1)[:, 0] > 0
        return self._hit_near_cache

    @torch.no_grad()
    def carve(self, origins: torch.Tensor, directions: torch.Tensor, ranges: torch.Tensor,
              margin_cells: float = 1.5, max_steps: int = 512, chunk: int = 1 << 20,
              free_rays: int | None = None, margin: float = 0.0) -> tuple[int, int]:
        """Range rays (world origins [N,3], unit directions [N,3], measured ranges [N]) mark the cells they crossed
        up to ``margin_cells`` cell sizes (at least ``margin`` scene units: sensor noise and the pose error between
        keyframes, which would otherwise carve the surface one keyframe saw with the rays of another) in front of
        their returns as free, and the cells of their returns as hits
        (both also seen). Free cells without a hit are never occupied, hit cells always are (:meth:`update` keeps
        it so), from now on: training and rendering stop marching through the space between the sensor and the
        surfaces before the field has learnt that it is empty. Each point counts in the finest level that contains
        it (as the marcher reads the cascades); rays sample their path every half finest cell (coarser for long
        rays: at most ``max_steps`` points). Every ray marks its return; an even subset of ``free_rays`` of them (None:
        all) carves (a return costs one point, a carved path hundreds). Returns (cells newly free, cells newly
        hit)."""
        if origins.numel() == 0:
            return 0, 0
        o_all, d_all, r_all = origins.float(), directions.float(), ranges.float()
        o, d, r = o_all, d_all, r_all
        if free_rays is not None and r.numel() > free_rays:
            sel = torch.linspace(0, r.numel() - 1, free_rays).round().long()
            o, d, r = o[sel], d[sel], r[sel]
        boxes = self.level_boxes()
        g = self.cfg.resolution
        cell0 = float(((boxes[0, 1] - boxes[0, 0]) / g).min())
        step = max(cell0, float(r.max()) / max_steps)  # one point per finest cell: a corner may be missed (less carved)
        ts = torch.arange(0.5 * step, float(r.max()), step)
        free_new = torch.zeros_like(self.free)
        n_rays_chunk = max(1, chunk // max(1, ts.numel()))
        for i in range(0, o.shape[0], n_rays_chunk):
            oo, dd, rr = o[i:i + n_rays_chunk], d[i:i + n_rays_chunk], r[i:i + n_rays_chunk]
            m0 = max(margin_cells * cell0, margin)
            ri, ti = torch.nonzero(ts[None, :] < (rr[:, None] - m0), as_tuple=True)
            t = ts[ti]
            lvl, flat, inside = self._cells(oo[ri] + dd[ri] * t[:, None], boxes)
            # beyond level 0 the cells (and the margin) grow with the level
            m = inside & ((lvl == 0) | (t < rr[ri] - torch.clamp_min(margin_cells * cell0 * torch.pow(2.0, lvl.float()),
                                                                     margin)))
            free_new.view(self.levels, -1)[lvl[m], flat[m]] = True
        lvl, flat, inside = self._cells(o_all + d_all * r_all[:, None], boxes)
        hit_new = torch.zeros_like(self.hit)
        hit_new.view(self.levels, -1)[lvl[inside], flat[inside]] = True
        n_free, n_hit = int((free_new & ~self.free).sum()), int((hit_new & ~self.hit).sum())
        self.free |= free_new
        self.hit |= hit_new
        self._range_seen = True
        self._hit_near_cache = None
        if self.cfg.visibility:
            self.seen |= free_new | hit_new
        self._apply_range()
        return n_free, n_hit

    def _cells(self, pts: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Finest level containing each point [P,3], its flat cell index in that level, and whether any level
        contains it."""
        g = self.cfg.resolution
        lo, hi = boxes[0, 0], boxes[0, 1]
        c, h = (lo + hi) / 2, (hi - lo) / 2
        ratio = ((pts - c).abs() / h).amax(-1)
        lvl = torch.ceil(torch.log2(ratio.clamp_min(1e-12))).clamp_min(0).long()
        inside = lvl < self.levels
        lvl = lvl.clamp_max(self.levels - 1)
        blo, bhi = boxes[lvl, 0], boxes[lvl, 1]
        ijk = ((pts - blo) / (bhi - blo) * g).floor().long().clamp(0, g - 1)
        flat = (ijk[:, 0] * g + ijk[:, 1]) * g + ijk[:, 2]
        return lvl, flat, inside & torch.isfinite(pts).all(-1)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Checkpoints from before range carving have no ``free`` / ``hit`` cells: they load as none."""
        state_dict = dict(state_dict)
        for k in ("free", "hit"):
            state_dict.setdefault(k, torch.zeros_like(getattr(self, k)))
        out = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._range_seen = bool(self.hit.any())
        self._hit_near_cache = None
        return out

    @torch.no_grad()
    def mark_visible(self, cameras, far: float, depths: list | None = None) -> int:
        """Mark the cells whose centre one of ``cameras`` (a ``Cameras``, OpenGL c2w) sees within ``far`` as seen
        (and, before any density says otherwise, occupied); a margin of one cell's radius keeps cells that straddle
        the image border. ``depths``: per camera a z-depth image on its grid (scene units, 0 = no return) or None:
        where a pixel has a return, only cells up to it (plus the margin) are seen: what lies behind a surface is
        hidden from that camera, and an untrained field's haze there would be marched by every ray that the surface
        does not stop yet (the TSDF integrators' visibility test). Returns how many cells became seen. No-op without
        ``cfg.visibility``.

        Tested per block of 2x2x2 cells (the block's centre and radius): 8x fewer projections, a conservative
        superset of the per-cell test (at most one cell more at the frustum's edge). A looping bag adds keyframes
        several times a second, and per cell the marking took a large share of the node's CPU (the demo's profile:
        docs/results/online.md)."""
        if not self.cfg.visibility:
            return 0
        vis = torch.zeros(self.levels * self._blocks()[0] ** 3, dtype=torch.bool)
        for i in range(len(cameras)):
            u, v, depth, dist, rad, inside = self._blocks_in_view(cameras, i, far)
            dimg = depths[i] if depths is not None else None
            if dimg is not None:
                # small holes (masked depth edges, dropouts) take the farthest return around them: a hole must not
                # open a line of sight to everything behind the surface
                dimg = dimg.float()
                near_max = torch.nn.functional.max_pool2d(dimg[None, None], 9, stride=1, padding=4)[0, 0]
                z = _lookup(torch.where(dimg > 0, dimg, near_max), u, v)
                inside &= (z <= 0) | (depth - rad <= z + rad)  # no return there, or not behind the surface
            vis |= ((depth > 0) & inside) | (dist <= rad)  # in view, or the camera's own block
        vis = self._block_cells(vis)
        new = vis & ~self.seen
        self.seen |= vis
        self.occupied |= new
        self._apply_range()
        return int(new.sum())

    @torch.no_grad()
    def carve_depth(self, cameras, depths: list, margin: float = 0.0, far: float = float("inf")) -> int:
        """Projective carving from depth images (the TSDF integrators' test, per block of 2x2x2 cells): a block that
        one of ``cameras`` sees, whose far side lies more than ``margin`` in front of the nearest return around its
        pixel (``depths[i]``: z-depth on the camera's grid, 0 = none; a 7x7 minimum, so a block beside a nearer
        object's edge is kept), is free. Covers the whole frustum in front of the surfaces at the cost of one
        projection per block, where ray carving (:meth:`carve`) covers only the cells its rays cross. Returns how many
        cells became free."""
        free = torch.zeros(self.levels * self._blocks()[0] ** 3, dtype=torch.bool)
        for i in range(len(cameras)):
            u, v, depth, dist, rad, inside = self._blocks_in_view(cameras, i, far)
            d = depths[i].float()
            zmin = -torch.nn.functional.max_pool2d(-torch.where(d > 0, d, torch.full_like(d, float("inf")))[None, None],
                                                   7, stride=1, padding=3)[0, 0]
            z = _lookup(zmin, u, v)
            free |= inside & (depth > 0) & torch.isfinite(z) & (depth + rad < z - margin)
        cells = self._block_cells(free)
        new = int((cells & ~self.free).sum())
        self.free |= cells
        self._range_seen = True
        if self.cfg.visibility:
            self.seen |= cells
        self._apply_range()
        return new

    def _blocks(self) -> tuple[int, int]:
        """(blocks per axis, cells per block side): visibility and projective carving test blocks of 2x2x2 cells."""
        g = self.cfg.resolution
        b = g // 2 if g % 2 == 0 else g  # blocks per axis (odd resolutions: one cell a block)
        return b, g // b

    def _blocks_in_view(self, cameras, i: int, far: float):
        """Block centres seen by camera ``i``: (u, v pixel coordinates, depth along the optical axis, distance to the
        camera, block radius, in-view mask within ``far``), all [L*B^3]."""
        b, _ = self._blocks()
        if self._centres is None:
            idx = torch.arange(b**3)
            self._centres = torch.cat([self.cell_centers(lvl, idx, jitter=False, resolution=b)
                                       for lvl in range(self.levels)])
        boxes = self.level_boxes()
        radius = ((boxes[:, 1] - boxes[:, 0]) / b).norm(dim=-1) * 0.5  # [L] block half-diagonal per level
        rad = radius.repeat_interleave(b**3)
        c2w = cameras.c2w[i].float()
        p = (self._centres - c2w[:, 3]) @ c2w[:, :3]  # camera frame (OpenGL: x right, y up, z back)
        depth = -p[:, 2]
        dist = p.norm(dim=-1)
        u, v = project(cameras, i, p)  # the camera's own model (distortion included)
        m = float(cameras.fx[i]) * rad / depth.clamp_min(1e-6)  # the block's radius in pixels
        w, h = float(cameras.width[i]), float(cameras.height[i])
        inside = (u > -m) & (u < w + m) & (v > -m) & (v < h + m) & (depth - rad < far)
        return u, v, depth, dist, rad, inside

    def _block_cells(self, blocks: torch.Tensor) -> torch.Tensor:
        b, f = self._blocks()
        g = self.cfg.resolution
        return blocks.view(self.levels, b, 1, b, 1, b, 1).expand(self.levels, b, f, b, f, b, f).reshape(
            self.levels, g, g, g)

    def occupancy_fraction(self) -> float:
        return float(self.occupied.float().mean())


def _lookup(img: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``img`` [H,W] at pixel coordinates (u, v) (nearest, clamped to the image; NaN coordinates read pixel 0)."""
    hh, ww = img.shape
    iu = torch.nan_to_num(u, nan=0.0).clamp(0, ww - 1).long()
    iv = torch.nan_to_num(v, nan=0.0).clamp(0, hh - 1).long()
    return img[iv, iu]
