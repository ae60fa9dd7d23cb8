"""Volume rendering on packed samples (nerfacc-style functional kernels).

Samples are *packed*: one flat array of all samples of all rays, sorted by ray, with ``ray_indices[S]`` telling
which ray each sample belongs to. Everything is differentiable through autograd.
"""
from __future__ import annotations

import torch


def segment_starts(ray_indices: torch.Tensor, n_rays: int) -> torch.Tensor:
    """[S] sorted ray ids -> [n_rays] index of each ray's first sample (== count offset; valid for rays with samples)."""
    counts = torch.bincount(ray_indices, minlength=n_rays)
    return torch.cumsum(counts, 0) - counts


def render_transmittance(
    sigmas: torch.Tensor, t_starts: torch.Tensor, t_ends: torch.Tensor, ray_indices: torch.Tensor, n_rays: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Transmittance before each sample and each sample's alpha.

    Args:
        sigmas, t_starts, t_ends: [S]; ray_indices: [S] int64 sorted.
    Returns:
        trans [S] = exp(-sum_{j<i in same ray} sigma_j dt_j), alphas [S] = 1 - exp(-sigma_i dt_i).
    """
    tau = sigmas * (t_ends - t_starts)
    # Exclusive per-ray cumsum as a global cumsum minus its value at each ray's start. float64 keeps the
    # subtraction exact enough when the global sum over thousands of rays grows large.
    cs = torch.cumsum(tau.double(), 0) - tau.double()
    starts = segment_starts(ray_indices, n_rays)
    excl = cs - cs[starts[ray_indices]]
    trans = torch.exp(-excl).to(sigmas.dtype)
    alphas = 1.0 - torch.exp(-tau)
    return trans, alphas


def render_weights(
    sigmas: torch.Tensor, t_starts: torch.Tensor, t_ends: torch.Tensor, ray_indices: torch.Tensor, n_rays: int
) -> torch.Tensor:
    """[S] compositing weights w_i = T_i * alpha_i."""
    trans, alphas = render_transmittance(sigmas, t_starts, t_ends, ray_indices, n_rays)
    return trans * alphas


def accumulate_along_rays(
    weights: torch.Tensor, ray_indices: torch.Tensor, n_rays: int, values: torch.Tensor | None = None
) -> torch.Tensor:
    """Sum ``weights[:,None] * values`` per ray.

    Args:
        weights: [S]; values: [S, C] or None (then the opacity is returned).
    Returns:
        [n_rays, C] (or [n_rays, 1] when values is None).
    """
    src = weights[:, None] if values is None else weights[:, None] * values
    out = torch.zeros(n_rays, src.shape[1], dtype=src.dtype, device=src.device)
    return out.index_add(0, ray_indices, src)


def exclusive_cumsum(values: torch.Tensor, ray_indices: torch.Tensor, n_rays: int) -> torch.Tensor:
    """[S] per-ray sum of the values before each sample (packed, sorted by ray)."""
    cs = torch.cumsum(values.double(), 0) - values.double()
    starts = segment_starts(ray_indices, n_rays)
    return (cs - cs[starts[ray_indices]]).to(values.dtype)


def median_sample(weights: torch.Tensor, ray_indices: torch.Tensor, n_rays: int,
                  opacity: torch.Tensor | None = None) -> torch.Tensor:
    """[n_rays] index of each ray's median sample: the first where the cumulative weight reaches half the ray's
    opacity (``weights.numel()`` for rays without samples). Sharper than the expected depth, which averages a
    foreground edge with the background behind it."""
    if opacity is None:
        opacity = accumulate_along_rays(weights, ray_indices, n_rays)[:, 0]
    reached = exclusive_cumsum(weights, ray_indices, n_rays) + weights >= 0.5 * opacity[ray_indices]
    first = torch.full((n_rays,), weights.numel(), dtype=torch.long)
    sel = torch.nonzero(reached).squeeze(1)
    return first.scatter_reduce_(0, ray_indices[sel], sel, "amin", include_self=True)


def marching_coordinate(t: torch.Tensor, step_size: float, cone_angle: float) -> torch.Tensor:
    """Distance ``t`` along a ray as the marcher's step count from the camera: ``t / step_size`` up to
    ``t* = step_size / cone_angle``, then ``(1 + ln(t / t*)) / cone_angle`` where the step grows as ``cone_angle * t``
    (:mod:`nerf_mapping.rendering.marching`). Every marching step has length ~1 in it, so a loss over intervals in
    this coordinate weighs near and far samples alike; in metres, the cone-marched far samples are long intervals and
    the distortion loss's self term would pull weight towards the camera (mip-NeRF 360 uses its normalised s-space
    for the same reason)."""
    if cone_angle <= 0:
        return t / step_size
    t_star = step_size / cone_angle
    far = (1.0 + torch.log(t.clamp_min(t_star) / t_star)) / cone_angle
    return torch.where(t <= t_star, t / step_size, far)


def distortion_loss(weights: torch.Tensor, t_starts: torch.Tensor, t_ends: torch.Tensor, ray_indices: torch.Tensor,
                    n_rays: int) -> torch.Tensor:
    """[n_rays] mip-NeRF 360's distortion loss sum_ij w_i w_j |m_i - m_j| + 1/3 sum_i w_i^2 (t1_i - t0_i) (m: sample
    midpoints), in O(S) with per-ray prefix sums as nerfacc computes it: it is small when each ray's weight sits in
    one compact interval, and large for a semi-transparent haze spread along the ray."""
    mids = 0.5 * (t_starts + t_ends)
    w_before = exclusive_cumsum(weights, ray_indices, n_rays)
    wm_before = exclusive_cumsum(weights * mids, ray_indices, n_rays)
    per_sample = 2.0 * weights * (mids * w_before - wm_before) + (weights ** 2) * (t_ends - t_starts) / 3.0
    return torch.zeros(n_rays, dtype=weights.dtype).index_add(0, ray_indices, per_sample)
