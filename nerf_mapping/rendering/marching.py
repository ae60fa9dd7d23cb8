"""Ray marching through a multi-level occupancy grid (CPU sampler; nerfacc's OccGridEstimator needs CUDA).

Grid convention: ``occupied[level, ix, iy, iz]`` (ix along x). Level 0 covers ``aabb``; level ``k``
covers the aabb scaled by ``2^k`` about its centre; cell size = level box size / G. The finest level
containing a point is the smallest ``k`` whose (closed) box contains it.

Sample sequence of a ray, shared bit-for-bit by the torch reference and the native kernel (both evaluate
it in float64 with the same operations): ``[t0, t1]`` = ``[t_min, t_max]`` clipped to the outermost box;
``t_0 = t0``, ``dt_k = clamp(t_k * cone_angle, step_size, 1e10)``, ``t_{k+1} = t_k + dt_k`` while
``t_k < t1``. Sample ``k`` is ``[t_k, min(t_k + dt_k, t1)]`` and is emitted iff the finest-level cell
containing its midpoint is occupied; at most ``max_samples_per_ray`` samples are emitted per ray (the
first ones). Output is sorted by ray, then t.

The native kernel skips empty cells (one grid look-up per empty cell instead of one per step); the torch
reference tests every candidate step, vectorised over rays.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

__all__ = ["march_rays", "march_rays_torch", "march_rays_native", "ray_aabb_intersect"]

_log = logging.getLogger(__name__)


def _safe_dirs(directions: Tensor) -> Tensor:
    # axis-parallel rays: 1/0 would give inf * 0 = nan in the slab test; replace tiny components by 1e-12
    # (the native kernel does exactly the same, so both clip identically)
    return torch.where(directions.abs() < 1e-12, torch.full_like(directions, 1e-12), directions)


def _level_box(aabb: Tensor, level: int) -> tuple[Tensor, Tensor]:
    """Box of ``level``: aabb scaled by 2^level about its centre (float64 expressions mirror the kernel)."""
    lo, size = aabb[:3], aabb[3:] - aabb[:3]
    s = float(2.0**level)
    return lo + size * ((0.0 - 0.5) * s + 0.5), lo + size * ((1.0 - 0.5) * s + 0.5)


def ray_aabb_intersect(origins: Tensor, directions: Tensor, box_lo: Tensor, box_hi: Tensor) -> tuple[Tensor, Tensor]:
    """Slab test. origins, directions: [R, 3]; box_lo, box_hi: [3]. Returns (t_near [R], t_far [R]);
    the ray misses when t_near > t_far."""
    inv = 1.0 / _safe_dirs(directions)
    ta = (box_lo - origins) * inv
    tb = (box_hi - origins) * inv
    return torch.minimum(ta, tb).amax(dim=-1), torch.maximum(ta, tb).amin(dim=-1)


@torch.no_grad()
def march_rays_torch(
    origins: Tensor,
    directions: Tensor,
    t_min: Tensor,
    t_max: Tensor,
    occupied: Tensor,
    aabb: Tensor,
    step_size: float,
    cone_angle: float = 0.0,
    max_samples_per_ray: int = 1024,
    chunk: int = 4096,
) -> tuple[Tensor, Tensor, Tensor]:
    """Pure-PyTorch reference of :func:`march_rays` (tests every candidate step; chunked over rays).

    Args:
        origins, directions: Tensor[R, 3] (directions need not be unit; t is in their units).
        t_min, t_max: Tensor[R] ray bounds.
        occupied: BoolTensor[L, Gx, Gy, Gz].
        aabb: Tensor[6] (xmin, ymin, zmin, xmax, ymax, zmax) of level 0.
    Returns:
        ray_indices LongTensor[S], t_starts Tensor[S], t_ends Tensor[S] (dtype of origins, float32 unless float64).
    """
    if step_size <= 0:
        raise ValueError("step_size must be > 0")
    out_dtype = torch.float64 if origins.dtype == torch.float64 else torch.float32
    dev = origins.device
    R = origins.shape[0]
    parts = []
    for s in range(0, R, chunk):
        e = min(R, s + chunk)
        parts.append(_march_chunk_torch(origins[s:e], directions[s:e], t_min.reshape(-1)[s:e], t_max.reshape(-1)[s:e],
                                        occupied, aabb, step_size, cone_angle, max_samples_per_ray, s))
    if not parts:
        empty = torch.empty(0, dtype=out_dtype, device=dev)
        return torch.empty(0, dtype=torch.long, device=dev), empty, empty.clone()
    ri = torch.cat([p[0] for p in parts])
    return ri, torch.cat([p[1] for p in parts]).to(out_dtype), torch.cat([p[2] for p in parts]).to(out_dtype)


def _march_chunk_torch(origins, directions, t_min, t_max, occupied, aabb, step_size, cone_angle, max_samples, offset):
    dev = origins.device
    o = origins.to(torch.float64)
    d = directions.to(torch.float64)
    aabb = aabb.to(device=dev, dtype=torch.float64).reshape(6)
    occupied = occupied.to(device=dev, dtype=torch.bool)
    L, Gx, Gy, Gz = occupied.shape
    olo, ohi = _level_box(aabb, L - 1)
    tn, tf = ray_aabb_intersect(o, d, olo, ohi)
    t0 = torch.maximum(t_min.to(torch.float64), tn)
    t1 = torch.minimum(t_max.to(torch.float64), tf)
    t1 = torch.where(t0 < t1, t1, t0)  # empty range -> no candidate
    # candidate steps: iterate the recurrence t <- t + dt (bitwise identical to the kernel)
    starts, ends = [], []
    t = t0.clone()
    while True:
        active = t < t1
        if not bool(active.any()):
            break
        dt = (t * cone_angle).clamp(step_size, 1e10)
        starts.append(torch.where(active, t, torch.full_like(t, float("nan"))))
        ends.append(torch.minimum(t + dt, t1))
        t = t + dt
    if not starts:
        return torch.empty(0, dtype=torch.long, device=dev), o.new_empty(0), o.new_empty(0)
    ts = torch.stack(starts, dim=1)  # [R, K], nan where inactive
    te = torch.stack(ends, dim=1)
    valid = ~torch.isnan(ts)
    mid = (ts + te) * 0.5
    p = o[:, None, :] + d[:, None, :] * mid[..., None]  # [R, K, 3]
    lo, size = aabb[:3], aabb[3:] - aabb[:3]
    u = (p - lo) / size
    m = (u - 0.5).abs().amax(dim=-1)  # [R, K]
    level = torch.full_like(m, -1, dtype=torch.long)
    for k in range(L - 1, -1, -1):  # descending, so the smallest containing level wins
        level = torch.where(m <= 0.5 * float(2.0**k), torch.full_like(level, k), level)
    inside = level >= 0
    lvl = level.clamp_min(0)
    inv_s = torch.pow(2.0, -lvl.to(torch.float64))  # exact powers of two
    uk = (u - 0.5) * inv_s[..., None] + 0.5
    gsz = torch.tensor([Gx, Gy, Gz], device=dev)
    cell = torch.minimum(torch.floor(uk * gsz.to(torch.float64)).to(torch.long).clamp_min(0), gsz - 1)
    flat = ((lvl * Gx + cell[..., 0]) * Gy + cell[..., 1]) * Gz + cell[..., 2]
    occ = occupied.reshape(-1)[flat.reshape(-1)].reshape(flat.shape)
    keep = valid & inside & occ
    rank = keep.long().cumsum(dim=1) - 1
    keep &= rank < max_samples
    rows, cols = keep.nonzero(as_tuple=True)
    return rows + offset, ts[rows, cols], te[rows, cols]


def march_rays_native(
    origins: Tensor,
    directions: Tensor,
    t_min: Tensor,
    t_max: Tensor,
    occupied: Tensor,
    aabb: Tensor,
    step_size: float,
    cone_angle: float = 0.0,
    max_samples_per_ray: int = 1024,
) -> tuple[Tensor, Tensor, Tensor]:
    """Native (C++/OpenMP, two passes: count then fill, empty-cell skipping) version of :func:`march_rays`.
    Raises RuntimeError if the extension is unavailable."""
    from nerf_mapping import native

    mod = native.load()
    if mod is None:
        raise RuntimeError(f"native kernels unavailable: {native.error()}")
    return mod.march_rays(origins.detach().cpu(), directions.detach().cpu(), t_min.detach().reshape(-1).cpu(),
                          t_max.detach().reshape(-1).cpu(), occupied.cpu(), aabb.detach().reshape(-1).cpu(),
                          float(step_size), float(cone_angle), int(max_samples_per_ray))


def march_rays(
    origins: Tensor,
    directions: Tensor,
    t_min: Tensor,
    t_max: Tensor,
    occupied: Tensor,
    aabb: Tensor,
    step_size: float,
    cone_angle: float = 0.0,
    max_samples_per_ray: int = 1024,
    impl: str = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """March rays through the occupancy grid (see the module docstring for the exact semantics).

    Args:
        origins, directions: Tensor[R, 3]; t_min, t_max: Tensor[R]; occupied: BoolTensor[L, G, G, G];
        aabb: Tensor[6] level-0 box; step_size: minimum step; cone_angle: dt = clamp(t * cone_angle, step, 1e10).
        impl: "auto" (native on CPU tensors if it builds, else torch), "native" or "torch".
    Returns:
        ray_indices LongTensor[S], t_starts Tensor[S], t_ends Tensor[S], sorted by ray then t.
    """
    if impl not in ("auto", "native", "torch"):
        raise ValueError(f"unknown impl {impl!r}")
    if impl == "native" or (impl == "auto" and origins.device.type == "cpu"):
        from nerf_mapping import native

        if native.load() is not None:
            return march_rays_native(origins, directions, t_min, t_max, occupied, aabb, step_size, cone_angle,
                                     max_samples_per_ray)
        if impl == "native":
            raise RuntimeError(f"native kernels unavailable: {native.error()}")
    return march_rays_torch(origins, directions, t_min, t_max, occupied, aabb, step_size, cone_angle,
                            max_samples_per_ray)
