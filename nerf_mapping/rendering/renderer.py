"""Ray and image rendering: occupancy-grid marching -> field -> packed compositing.

Two paths compute the same image:

* ``render_rays``: for training. A density-only pruning pass finds the samples that matter, then the full field runs
  with gradients on those only.
* ``render_rays_inference``: for every use without gradients (evaluation, node renders, mesh export, text queries).
  One pass: live rays march a round of occupied samples each, the fused field kernel (``NGPField.infer``) gives
  their density, the colour MLP runs only for the samples that show (``color_weight_thre``), the round is
  composited into per-ray accumulators, and rays that became opaque (transmittance < ``early_stop_eps``), left the
  grid or reached ``max_samples_per_ray`` retire before the next round.
  Its time and memory are bounded whatever the training state: beyond ``inference_fine_samples`` per ray the
  step doubles each round, and ``max_samples_per_ray`` caps each ray. Where neither feature heads nor the packed
  samples are asked for, the whole loop runs in one native call per batch (``native.render_inference``: no
  per-round tensor bookkeeping, so it is faster, docs/results/render.md; it also gives each ray's median
  termination distance, for mesh export and the query candidates); the torch-driven loop is its tested reference.

``render_camera`` renders a whole image of any camera (rgb, depth, opacity, feature heads) with the inference path.
"""
from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass, replace

import torch

from nerf_mapping.cameras import Cameras, camera_directions, pixel_centers, rays_from_c2w
from nerf_mapping.fields.ngp_field import NGPField
from nerf_mapping.rendering.compositing import (accumulate_along_rays, exclusive_cumsum, median_sample,
                                               render_transmittance)
from nerf_mapping.rendering.occupancy_grid import OccupancyGrid


@dataclass
class RenderConfig:
    step_size: float | None = None
    """Marching step in scene units; None: scene-box diagonal / 1000 (nerfacc's 5e-3 for the Blender box)."""
    cone_angle: float | None = None
    """Step growth with distance; None: 0 for bounded scenes, 1/256 for unbounded ones."""
    alpha_thre: float = 0.0
    """Samples with a lower alpha are dropped before the gradient pass (0 keeps all)."""
    early_stop_eps: float = 1e-4
    """Samples behind a transmittance below this are dropped (transmittance early stop)."""
    max_samples_per_ray: int = 1024
    """Cap on the samples marched per ray (bounds the cost of rays through a still-transparent grid)."""
    prune_pass: bool = True
    """Find the contributing samples first (density only, no gradients, in rounds with early stop), then run the
    full field with gradients on those only."""
    samples_per_round: int = 64
    """Samples per ray and round of the early-stop marching (training's pruning pass)."""
    train_fine_samples: int | None = None
    """Training's pruning pass: samples a ray marches at ``step_size`` before its step doubles every round (None:
    never). Early in a run the occupancy grid still marks the space between the cameras and the scene occupied and
    the field is a haze there; at a fixed step a ray then spends its whole ``max_samples_per_ray`` within a few
    metres of its camera and never reaches the scene. Doubling after the fine samples lets it reach 2^rounds times
    further at the same cost; a trained ray ends within its fine samples and is unaffected."""
    inference_samples_per_round: int = 16
    """Samples per live ray and round of the inference renderer: small rounds waste few evaluations behind a ray's
    surface; rays that pass through empty space are cheap anyway (the marcher skips empty cells)."""
    color_weight_thre: float = 1e-4
    """Inference skips the colour MLP for samples whose compositing weight is at most this (many of a trained
    field's samples: those in front of and behind its surfaces) ..."""
    color_skip_budget: float = 1e-3
    """... as long as the weight skipped on their ray stays within this budget: each pixel then differs from the
    full render by at most this much (a quarter of one 8-bit level)."""
    inference_fine_samples: int = 64
    """Visible samples (alpha > 1e-4) per ray marched at ``step_size`` by the inference renderer; a ray still
    semi-transparent after them continues with a step that doubles every round (``inference_samples_per_round``
    samples each). A sharp, trained surface ends its ray within them; a haze (an untrained field, a blurry room) is
    integrated more coarsely instead of costing hundreds of samples per ray, so a render's cost stays bounded at any
    step. Free space that the grid still marks occupied does not count, so it cannot coarsen the step before the
    ray meets its surface."""

    def resolved(self, scene_box: torch.Tensor, unbounded: bool) -> "RenderConfig":
        diag = float(torch.linalg.norm(scene_box[1] - scene_box[0]))
        return replace(
            self,
            step_size=self.step_size if self.step_size is not None else diag / 1000.0,
            cone_angle=self.cone_angle if self.cone_angle is not None else (1.0 / 256.0 if unbounded else 0.0),
        )


def _empty(n_rays: int, background: torch.Tensor, feature_dims: dict[str, int]) -> dict[str, torch.Tensor]:
    out = {
        "rgb": background.expand(n_rays, 3).clone(),
        "depth": torch.zeros(n_rays),
        "opacity": torch.zeros(n_rays),
        "n_samples": torch.tensor(0),
    }
    for k, d in feature_dims.items():
        out[k] = torch.zeros(n_rays, d)
    return out


def _positions(origins, directions, ray_idx, t0, t1):
    return origins[ray_idx] + directions[ray_idx] * ((t0 + t1) * 0.5)[:, None]


def _advance(alive, ri, a, b, sig, trans, t_cur, n_eval, k: int, cfg: RenderConfig) -> torch.Tensor:
    """End of a marching round (both renderers): fold the round's optical depth into each live ray's transmittance,
    move its start past its last sample, and return the rays that go on: those that filled the round (more occupied
    space ahead), are not yet opaque and have samples left."""
    n_alive = alive.numel()
    tau = torch.zeros(n_alive, dtype=sig.dtype).index_add_(0, ri, sig * (b - a))
    trans[alive] = trans[alive] * torch.exp(-tau)
    counts = torch.bincount(ri, minlength=n_alive)
    t_cur[alive] = torch.zeros(n_alive, dtype=b.dtype).scatter_reduce_(0, ri, b, "amax", include_self=False)
    n_eval[alive] += counts
    return alive[(counts == k) & (trans[alive] > cfg.early_stop_eps) & (n_eval[alive] < cfg.max_samples_per_ray)]


@torch.no_grad()
def early_stop_samples(
    field: NGPField,
    grid: OccupancyGrid,
    origins: torch.Tensor,
    directions: torch.Tensor,
    near: float | torch.Tensor,
    far: float | torch.Tensor,
    cfg: RenderConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Find the samples that matter, marching in rounds with transmittance early stop.

    Each round marches at most ``cfg.samples_per_round`` occupied samples per live ray, evaluates density only
    (no gradients), keeps samples whose transmittance > ``early_stop_eps`` and alpha > ``alpha_thre``, and retires
    rays that became opaque or left the grid. Samples behind the first surface are thus never evaluated, which
    matters most for inside-out scenes (rooms) where rays cross many occupied cells.

    Returns (ray_indices [S], t_starts [S], t_ends [S]) sorted by ray then t, and the number of samples evaluated.
    """
    n = origins.shape[0]
    t_cur = torch.as_tensor(near, dtype=origins.dtype).expand(n).clone()
    t_far = torch.as_tensor(far, dtype=origins.dtype).expand(n).contiguous()
    trans = torch.ones(n, dtype=origins.dtype)
    alive = torch.arange(n)
    n_eval = torch.zeros(n, dtype=torch.long)
    k = cfg.samples_per_round
    kept_r, kept_a, kept_b = [], [], []
    evaluated = 0
    # rounds since the ray used its fine samples (step x 2^coarse); None without train_fine_samples
    coarse = torch.zeros(n, dtype=torch.long) if cfg.train_fine_samples is not None else None
    while alive.numel() > 0:
        ri, a, b = _march_levels(grid, origins[alive], directions[alive], t_cur[alive], t_far[alive],
                                 None if coarse is None else coarse[alive], cfg, k)
        if ri.numel() == 0:
            break
        evaluated += ri.numel()
        n_alive = alive.numel()
        sig = field.infer(_positions(origins[alive], directions[alive], ri, a, b))[0]  # fused, no autograd
        t_local, alphas = render_transmittance(sig, a, b, ri, n_alive)
        t_glob = trans[alive][ri] * t_local
        keep = (t_glob > cfg.early_stop_eps) & (alphas > cfg.alpha_thre)
        kept_r.append(alive[ri[keep]])
        kept_a.append(a[keep])
        kept_b.append(b[keep])
        alive = _advance(alive, ri, a, b, sig, trans, t_cur, n_eval, k, cfg)
        if coarse is not None:
            coarse[alive] += (n_eval[alive] >= cfg.train_fine_samples).long()
    if not kept_r:
        e = torch.zeros(0)
        return torch.zeros(0, dtype=torch.long), e, e, evaluated
    r, a, b = torch.cat(kept_r), torch.cat(kept_a), torch.cat(kept_b)
    order = torch.argsort(r, stable=True)  # rounds append in t order per ray; a stable sort keeps it
    return r[order], a[order], b[order], evaluated


def render_rays(
    field: NGPField,
    grid: OccupancyGrid,
    origins: torch.Tensor,
    directions: torch.Tensor,
    near: float | torch.Tensor,
    far: float | torch.Tensor,
    cfg: RenderConfig,
    background: torch.Tensor,
    feature_heads: list[str] | None = None,
    appearance: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Render a batch of rays.

    Args:
        origins, directions: [R,3] (directions unit length). ``cfg`` must be ``resolved``.
        background: [3] color composited behind the field (e.g. white for Blender scenes).
        feature_heads: names of ``field.heads`` to render as extra outputs.
        appearance: per-ray [R,A] or shared [A] appearance embedding (fields with ``appearance_dim`` > 0).
    Returns:
        dict with rgb [R,3], depth [R], opacity [R], n_samples (scalar), and one [R,D] entry per feature head; when
        any sample was rendered also the packed samples (``weights``, ``ray_indices``, ``t_starts``, ``t_ends``,
        ``positions`` [S,3]) for extensions that render their own quantities with the same weights.
    """
    n_rays = origins.shape[0]
    feat_dims: dict[str, int] = {}
    if feature_heads:  # output sizes, for rays that hit nothing
        empty = field.features(origins.new_zeros(0, 3), origins.new_zeros(0, field.cfg.geo_feat_dim), feature_heads)
        feat_dims = {k: v.shape[1] for k, v in empty.items()}

    if cfg.prune_pass and (cfg.early_stop_eps > 0 or cfg.alpha_thre > 0):
        ray_idx, t0, t1, n_marched = early_stop_samples(field, grid, origins, directions, near, far, cfg)
        if ray_idx.numel() == 0:
            return _empty(n_rays, background, feat_dims)
    else:
        ray_idx, t0, t1 = grid.sampling(origins, directions, near, far, cfg.step_size, cfg.cone_angle,
                                        cfg.max_samples_per_ray)
        n_marched = ray_idx.numel()
        if ray_idx.numel() == 0:
            return _empty(n_rays, background, feat_dims)

    pos = _positions(origins, directions, ray_idx, t0, t1)
    sigmas, geo = field.density(pos)
    if appearance is not None and appearance.dim() == 2:
        appearance = appearance[ray_idx]
    rgbs = field.color(geo, directions[ray_idx], appearance)
    trans, alphas = render_transmittance(sigmas, t0, t1, ray_idx, n_rays)
    weights = trans * alphas
    opacity = accumulate_along_rays(weights, ray_idx, n_rays)[:, 0]
    rgb = accumulate_along_rays(weights, ray_idx, n_rays, rgbs) + (1.0 - opacity)[:, None] * background
    depth = accumulate_along_rays(weights, ray_idx, n_rays, ((t0 + t1) * 0.5)[:, None])[:, 0]
    depth = depth / opacity.clamp_min(1e-6)
    out = {"rgb": rgb, "depth": depth, "opacity": opacity, "n_samples": torch.tensor(ray_idx.numel()),
           "n_marched": torch.tensor(n_marched),
           "weights": weights, "ray_indices": ray_idx, "t_starts": t0, "t_ends": t1, "positions": pos}
    if feature_heads:
        feats = field.features(pos, geo, feature_heads)
        for k, v in feats.items():
            out[k] = accumulate_along_rays(weights.detach(), ray_idx, n_rays, v) / opacity.detach().clamp_min(1e-6)[:, None]
    return out


def _march_levels(grid: OccupancyGrid, origins, directions, t_min, t_max, level: torch.Tensor | None,
                  cfg: RenderConfig, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One inference round: up to ``k`` occupied samples per ray, ray ``i`` marching with the step
    ``cfg.step_size * 2**level[i]`` (one marcher call per distinct level; ``level`` None: all at level 0). Packed
    output, sorted by ray then t."""
    if level is None:
        return grid.sampling(origins, directions, t_min, t_max, cfg.step_size, cfg.cone_angle, k)
    levels = torch.unique(level)
    if levels.numel() == 1:
        return grid.sampling(origins, directions, t_min, t_max, cfg.step_size * 2.0 ** int(levels[0]),
                             cfg.cone_angle, k)
    parts = []
    for lv in levels.tolist():
        idx = torch.nonzero(level == lv).squeeze(1)
        ri, a, b = grid.sampling(origins[idx], directions[idx], t_min[idx], t_max[idx], cfg.step_size * 2.0 ** lv,
                                 cfg.cone_angle, k)
        parts.append((idx[ri], a, b))
    ri = torch.cat([p[0] for p in parts])
    order = torch.argsort(ri, stable=True)  # each part is sorted by ray then t; a stable sort keeps t order
    return ri[order], torch.cat([p[1] for p in parts])[order], torch.cat([p[2] for p in parts])[order]


@torch.no_grad()
def render_rays_inference(
    field: NGPField,
    grid: OccupancyGrid,
    origins: torch.Tensor,
    directions: torch.Tensor,
    near: float | torch.Tensor,
    far: float | torch.Tensor,
    cfg: RenderConfig,
    background: torch.Tensor,
    feature_heads: list[str] | None = None,
    appearance: torch.Tensor | None = None,
    return_samples: bool = False,
    impl: str = "auto",
    return_median: bool = False,
) -> dict[str, torch.Tensor]:
    """Render rays without gradients (see the module docstring); same outputs as :func:`render_rays`.

    ``return_samples``: also the packed samples in front of each ray's early-stop point (``weights``,
    ``ray_indices``, ``t_starts``, ``t_ends``, ``positions``, sorted by ray then t), for callers that composite their
    own quantities (language features).
    ``return_median``: also ``median_depth`` [R], each ray's median termination distance over those samples (the
    midpoint of the first whose cumulative weight reaches half of theirs; 0 for a ray without samples): sharper than
    the expected depth at a foreground edge (mesh export, query candidates).
    ``appearance``: a shared embedding [A] (per-ray embeddings fall back to the unfused field evaluation).
    ``impl``: ``auto`` runs the whole loop in the native kernel (``native.render_inference``, one call per batch)
    when the field's fused kernels and the native marcher apply and neither feature heads nor the packed samples are
    asked for; ``torch`` always runs the loop below (the reference the native loop is tested against).
    """
    if impl not in ("auto", "torch"):
        raise ValueError(f"impl must be 'auto' or 'torch', got {impl!r}")
    if impl == "auto" and not feature_heads and not return_samples:
        out = _render_native(field, grid, origins, directions, near, far, cfg, background, appearance, return_median)
        if out is not None:
            return out
    n = origins.shape[0]
    dtype = origins.dtype
    t_cur = torch.as_tensor(near, dtype=dtype).expand(n).clone()
    t_far = torch.as_tensor(far, dtype=dtype).expand(n).contiguous()
    trans = torch.ones(n, dtype=dtype)
    n_eval = torch.zeros(n, dtype=torch.long)
    rgb = torch.zeros(n, 3, dtype=dtype)
    depth = torch.zeros(n, dtype=dtype)
    opacity = torch.zeros(n, dtype=dtype)
    skipped = torch.zeros(n, dtype=dtype)  # weight whose colour was not evaluated, per ray
    feats: dict[str, torch.Tensor] = {}
    if feature_heads:
        empty = field.features(origins.new_zeros(0, 3), origins.new_zeros(0, field.cfg.geo_feat_dim), feature_heads)
        feats = {k: torch.zeros(n, v.shape[1], dtype=dtype) for k, v in empty.items()}
    kept: dict[str, list[torch.Tensor]] = {k: [] for k in ("ray_indices", "t_starts", "t_ends", "weights")}
    alive = torch.arange(n)
    k = max(1, int(cfg.inference_samples_per_round))
    fine_used = torch.zeros(n, dtype=torch.long)  # samples with a visible alpha, per ray
    coarse = torch.zeros(n, dtype=torch.long)  # rounds since the ray used its fine samples: step x 2^coarse
    evaluated = 0
    while alive.numel() > 0:
        o_a, d_a = origins[alive], directions[alive]
        ri, a, b = _march_levels(grid, o_a, d_a, t_cur[alive], t_far[alive], coarse[alive], cfg, k)
        if ri.numel() == 0:
            break
        evaluated += ri.numel()
        n_alive = alive.numel()
        mid = (a + b) * 0.5
        pos = o_a[ri] + d_a[ri] * mid[:, None]
        sig, _, geo = field.infer(pos, want_geo=True)
        if cfg.alpha_thre > 0:  # as the training path: samples below the alpha threshold are empty space
            sig = torch.where(1.0 - torch.exp(-sig * (b - a)) > cfg.alpha_thre, sig, torch.zeros_like(sig))
        t_local, alphas = render_transmittance(sig, a, b, ri, n_alive)
        t_glob = trans[alive][ri] * t_local
        w = t_glob * alphas
        glob = alive[ri]
        opacity.index_add_(0, glob, w)
        # Colour only where it shows: samples of weight <= color_weight_thre are skipped (colour 0) while the weight
        # skipped on their ray stays <= color_skip_budget, which bounds each pixel's error by that budget.
        col = torch.zeros(ri.shape[0], 3, dtype=dtype)
        light = torch.where(w <= cfg.color_weight_thre, w, torch.zeros_like(w))
        skipped_total = skipped[glob] + exclusive_cumsum(light, ri, n_alive) + light
        skip = (w <= cfg.color_weight_thre) & (skipped_total <= cfg.color_skip_budget)
        skipped.index_add_(0, glob, torch.where(skip, w, torch.zeros_like(w)))
        vis = torch.nonzero(~skip).squeeze(1)
        col[vis] = field.infer_color(geo[vis], d_a[ri[vis]], appearance)
        rgb.index_add_(0, glob, w[:, None] * col)
        depth.index_add_(0, glob, w * mid)
        if feature_heads:
            for name, v in field.features(pos, geo, feature_heads).items():
                feats[name].index_add_(0, glob, w[:, None] * v)
        if return_samples or return_median:
            keep = t_glob > cfg.early_stop_eps
            for key, v in (("ray_indices", glob), ("t_starts", a), ("t_ends", b), ("weights", w)):
                kept[key].append(v[keep])
        # Only samples with a visible alpha use up the fine samples: free space that the grid still marks occupied
        # (early in a run) must not coarsen the step before the ray reaches its surface.
        coarse[alive] += (fine_used[alive] >= cfg.inference_fine_samples).long()
        fine_used[alive] += torch.bincount(ri, weights=(alphas > 1e-4).to(torch.float64), minlength=n_alive).long()
        alive = _advance(alive, ri, a, b, sig, trans, t_cur, n_eval, k, cfg)
    out = {
        "rgb": rgb + (1.0 - opacity)[:, None] * background,
        "depth": depth / opacity.clamp_min(1e-6),
        "opacity": opacity,
        "n_samples": torch.tensor(evaluated),
        "n_marched": torch.tensor(evaluated),
    }
    for name, v in feats.items():
        out[name] = v / opacity.clamp_min(1e-6)[:, None]
    if return_samples or return_median:
        if kept["ray_indices"]:
            packed = {key: torch.cat(v) for key, v in kept.items()}
            order = torch.argsort(packed["ray_indices"], stable=True)  # rounds append in t order per ray
            packed = {key: v[order] for key, v in packed.items()}
        else:
            packed = {"ray_indices": torch.zeros(0, dtype=torch.long), "t_starts": torch.zeros(0),
                      "t_ends": torch.zeros(0), "weights": torch.zeros(0)}
        if return_median:
            w, ri = packed["weights"], packed["ray_indices"]
            first = median_sample(w, ri, n, accumulate_along_rays(w, ri, n)[:, 0])
            hit = first < len(ri)
            med = torch.zeros(n, dtype=dtype)
            med[hit] = ((packed["t_starts"] + packed["t_ends"]) * 0.5)[first[hit]]
            out["median_depth"] = med
        if return_samples:
            packed["positions"] = _positions(origins, directions, packed["ray_indices"], packed["t_starts"],
                                             packed["t_ends"])
            out.update(packed)
    return out


def _render_native(field, grid, origins, directions, near, far, cfg, background, appearance, median=False):
    """:func:`render_rays_inference` in one native call, or None where it does not apply (no native build, the torch
    marcher asked for, per-ray appearance, a float64 batch)."""
    if grid.cfg.impl == "torch" or origins.dtype != torch.float32 or origins.shape[0] == 0:
        return None
    args = field.native_render_args(appearance)
    if args is None:
        return None
    from nerf_mapping import native

    n = origins.shape[0]
    rgb, depth, opacity, med, evaluated = native.load().render_inference(
        origins, directions, torch.as_tensor(near, dtype=origins.dtype).expand(n).contiguous(),
        torch.as_tensor(far, dtype=origins.dtype).expand(n).contiguous(), grid.occupied, grid.aabb,
        float(cfg.step_size), float(cfg.cone_angle), max(1, int(cfg.inference_samples_per_round)),
        int(cfg.inference_fine_samples), int(cfg.max_samples_per_ray), float(cfg.early_stop_eps),
        float(cfg.alpha_thre), float(cfg.color_weight_thre), float(cfg.color_skip_budget), **args,
        want_median=bool(median))
    out = {
        "rgb": rgb + (1.0 - opacity)[:, None] * background.to(rgb),
        "depth": depth / opacity.clamp_min(1e-6),
        "opacity": opacity,
        "n_samples": torch.tensor(evaluated),
        "n_marched": torch.tensor(evaluated),
    }
    if median:
        out["median_depth"] = med
    return out


@torch.no_grad()
def render_camera(
    field: NGPField,
    grid: OccupancyGrid,
    cameras: Cameras,
    index: int,
    cfg: RenderConfig,
    background: torch.Tensor,
    near: float,
    far: float,
    c2w: torch.Tensor | None = None,
    chunk: int = 1 << 14,
    feature_heads: list[str] | None = None,
    appearance: torch.Tensor | None = None,
    reference: bool = False,
    chunk_guard=None,
    pixel_order: torch.Tensor | None = None,
    deadline: float | None = None,
    min_pixels: int = 0,
    impl: str = "auto",
) -> dict[str, torch.Tensor]:
    """Render camera ``index`` of ``cameras`` (optionally at pose ``c2w`` [3,4], with the shared appearance embedding
    ``appearance`` [A]). Returns [H,W,*] images. ``reference``: render with the training path (:func:`render_rays`)
    instead of the inference path, for comparisons (``benchmark render``). ``chunk_guard``: a lock held while each
    chunk renders (e.g. the trainer's, so that training steps interleave with a long render).

    ``pixel_order`` (row-major pixel indices, e.g. :func:`nerf_mapping.rendering.budget.lattice_order`): render the
    pixels in that order; with ``deadline`` (``time.monotonic()`` seconds) stop after the first chunk that ends past
    it, once ``min_pixels`` are rendered. ``rendered_pixels`` in the result says how many of the order were; the
    images are zero elsewhere. ``impl``: the inference path's loop (:func:`render_rays_inference`)."""
    render = render_rays if reference else functools.partial(render_rays_inference, impl=impl)
    guard = chunk_guard if chunk_guard is not None else contextlib.nullcontext()
    w, h = int(cameras.width[index]), int(cameras.height[index])
    px, py = pixel_centers(w, h)
    idx = torch.full_like(px, index, dtype=torch.long)
    dirs_cam = camera_directions(cameras, idx, px, py)
    pose = (cameras.c2w[index] if c2w is None else c2w).to(dirs_cam.dtype)
    origins, dirs = rays_from_c2w(pose.expand(dirs_cam.shape[0], 3, 4), dirs_cam)
    valid = torch.isfinite(dirs).all(-1)
    dirs = torch.where(valid[:, None], dirs, torch.tensor([0.0, 0.0, -1.0]))
    if pixel_order is not None:
        origins, dirs = origins[pixel_order], dirs[pixel_order]
    keys = ["rgb", "depth", "opacity", *(feature_heads or [])]
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    n_samples, done = 0, 0
    for s in range(0, origins.shape[0], chunk):
        with guard:
            out = render(field, grid, origins[s:s + chunk], dirs[s:s + chunk], near, far, cfg, background,
                         feature_heads, appearance)
        if chunk_guard is not None:
            time.sleep(0.002)  # Python locks are not fair: let a thread waiting on the guard (training) take it
        n_samples += int(out.get("n_marched", out["n_samples"]))
        for k in keys:
            parts[k].append(out[k])
        done = min(s + chunk, origins.shape[0])
        if deadline is not None and done >= min_pixels and time.monotonic() > deadline:
            break
    flat = {k: torch.cat(v) for k, v in parts.items()}
    if pixel_order is not None:
        for k, v in flat.items():
            full = v.new_zeros((h * w, *v.shape[1:]))
            full[pixel_order[:done]] = v
            flat[k] = full
    res = {k: v.reshape(h, w, *v.shape[1:]) for k, v in flat.items()}
    res["rgb"] = res["rgb"].clamp(0, 1)
    res["n_samples"] = torch.tensor(n_samples)  # field evaluations (the reference's pruning pass included)
    res["rendered_pixels"] = torch.tensor(done)
    return res
