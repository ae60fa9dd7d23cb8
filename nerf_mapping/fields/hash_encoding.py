"""Multiresolution hash encoding (Instant-NGP, Mueller et al. 2022).

Three interchangeable implementations behind :class:`HashEncoding`:

* ``torch``  -- :func:`hash_encode_torch`, the pure-PyTorch reference (autograd does the backward).
* ``native`` -- C++/OpenMP CPU kernels from :mod:`nerf_mapping.native` (forward, table gradient and,
  only when ``x.requires_grad``, the spatial gradient needed by pose refinement).
* ``tcnn``   -- tiny-cuda-nn on CUDA (optional, see the note on :class:`HashEncoding`).

Grid convention (shared by torch and native, tested equal): a level of resolution ``R`` places
``R + 1`` vertices per axis on [0, 1]: ``pos = x * R``, lower corner ``i0 = clamp(floor(pos), 0, R - 1)``,
``frac = pos - i0``. A level with ``(R + 1)^3 <= T`` indexes its vertices densely
(``ix + iy (R+1) + iz (R+1)^2``), the others hash ``(ix * 1 ^ iy * 2654435761 ^ iz * 805459861) mod 2^32 mod T``.
Output features are level-major: ``out[n, l * F + f]``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = [
    "HashEncodingConfig",
    "HashEncoding",
    "level_resolutions",
    "dense_level_mask",
    "hash_encode_torch",
    "hash_encode_native",
    "native_available",
]

_log = logging.getLogger(__name__)

_PRIME_Y = 2654435761
_PRIME_Z = 805459861
_U32 = 0xFFFFFFFF
_NATIVE_FEATURES = (1, 2, 4, 8)  # compile-time specialisations in csrc/hash_encoding.cpp


@dataclass
class HashEncodingConfig:
    n_levels: int = 16
    """Resolution levels L (Instant-NGP's default)."""
    n_features_per_level: int = 2
    """Features stored per table entry; the encoding's output width is L times this."""
    log2_hashmap_size: int = 19
    """Entries per level table (T = 2^this); coarse levels that fit are indexed densely, finer ones hashed."""
    base_resolution: int = 16
    """Coarsest level resolution."""
    max_resolution: int = 2048
    """finest level resolution; per-level growth b = exp((ln max - ln base) / (L - 1))"""
    impl: Literal["auto", "native", "torch", "tcnn"] = "auto"
    """auto: tcnn if CUDA + tinycudann, else native if it builds, else torch"""


def level_resolutions(cfg: HashEncodingConfig) -> list[int]:
    """Resolution R_l = floor(base * b^l) of every level, b = exp((ln max - ln base) / (L - 1))."""
    if cfg.n_levels <= 1:
        return [int(cfg.base_resolution)][: max(cfg.n_levels, 0)] or []
    growth = math.exp((math.log(cfg.max_resolution) - math.log(cfg.base_resolution)) / (cfg.n_levels - 1))
    # the tiny epsilon keeps e.g. 16 * b^15 == 2048 from flooring to 2047 through rounding error
    return [int(math.floor(cfg.base_resolution * growth**lvl + 1e-6)) for lvl in range(cfg.n_levels)]


def dense_level_mask(resolutions: Tensor, table_size: int) -> Tensor:
    """BoolTensor[L]: levels whose (R+1)^3 vertices fit in the table are indexed densely (no collisions)."""
    r1 = resolutions.to(torch.long) + 1
    return r1 * r1 * r1 <= table_size


def _corner_indices_torch(i0: Tensor, resolutions: Tensor, dense_mask: Tensor, table_size: int) -> Tensor:
    """Table row of the 8 corners of every cell.

    Args:
        i0: LongTensor[N, L, 3] lower cell corner per level.
    Returns:
        LongTensor[N, L, 8] row indices in [0, T); corner c = 4 z + 2 y + x (bit 0 -> +x).
    """
    one = torch.arange(2, device=i0.device, dtype=torch.long)
    cx = i0[..., 0, None] + one  # [N, L, 2]
    cy = i0[..., 1, None] + one
    cz = i0[..., 2, None] + one
    idx = None
    if bool(dense_mask.any()):
        s1 = (resolutions.to(torch.long) + 1)[None, :, None]
        dense = cx[:, :, None, None, :] + (cy * s1)[:, :, None, :, None] + (cz * (s1 * s1))[:, :, :, None, None]
        idx = dense.reshape(*i0.shape[:2], 8)
    if not bool(dense_mask.all()):
        hashed = (cx[:, :, None, None, :] ^ (cy * _PRIME_Y)[:, :, None, :, None]
                  ^ (cz * _PRIME_Z)[:, :, :, None, None]).reshape(*i0.shape[:2], 8)
        if table_size & (table_size - 1) == 0:
            hashed = hashed & (table_size - 1)  # low bits of the uint32 hash == (h mod 2^32) mod T
        else:
            hashed = (hashed & _U32) % table_size
        idx = hashed if idx is None else torch.where(dense_mask[None, :, None], idx, hashed)
    return idx


def hash_encode_torch(x: Tensor, table: Tensor, resolutions: Tensor, dense_mask: Tensor) -> Tensor:
    """Pure-PyTorch multiresolution hash encoding (reference; differentiable wrt ``x`` and ``table``).

    Args:
        x: Tensor[N, 3] positions in [0, 1] (clamped).
        table: Tensor[L, T, F] feature table.
        resolutions: LongTensor[L] level resolutions.
        dense_mask: BoolTensor[L] levels indexed densely (requires (R+1)^3 <= T).
    Returns:
        Tensor[N, L * F] trilinearly interpolated features, level-major.
    """
    n_levels, table_size, n_feat = table.shape
    n = x.shape[0]
    res = resolutions.to(device=x.device, dtype=torch.long)
    dense_mask = dense_mask.to(device=x.device, dtype=torch.bool)
    pos = x.clamp(0.0, 1.0)[:, None, :] * res.to(x.dtype)[None, :, None]  # [N, L, 3]
    i0 = torch.minimum(pos.detach().floor().long().clamp_min(0), (res - 1)[None, :, None])  # [N, L, 3]
    frac = pos - i0.to(pos.dtype)  # [N, L, 3], carries the gradient wrt x
    idx = _corner_indices_torch(i0, res, dense_mask, table_size)  # [N, L, 8]
    # one gather over the flattened table; int64 + contiguous index (expanded int32 indices are unsafe)
    flat = (idx + (torch.arange(n_levels, device=x.device) * table_size)[None, :, None]).reshape(-1)
    vals = table.reshape(n_levels * table_size, n_feat).index_select(0, flat).view(n, n_levels, 8, n_feat)
    w1 = torch.stack((1.0 - frac, frac), dim=-1)  # [N, L, 3, 2]
    w = (w1[:, :, 2, :, None, None] * w1[:, :, 1, None, :, None] * w1[:, :, 0, None, None, :]).reshape(n, n_levels, 8)
    return (vals * w[..., None]).sum(dim=2).reshape(n, n_levels * n_feat)


# ----------------------------------------------------------------------------------------------------------- native


def _native_module():
    from nerf_mapping import native

    return native.load()


def native_available() -> bool:
    """True if the C++ kernels built and loaded."""
    return _native_module() is not None


class _NativeHashEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, table: Tensor, resolutions: Tensor, dense_mask: Tensor) -> Tensor:
        mod = _native_module()
        out = mod.hash_encode_forward(x, table, resolutions, dense_mask)
        ctx.save_for_backward(x, table, resolutions, dense_mask)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, table, resolutions, dense_mask = ctx.saved_tensors
        need_x, need_table = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_table, grad_x = _native_module().hash_encode_backward(
            grad_out, x, table, resolutions, dense_mask, need_table, need_x, None
        )
        return grad_x, grad_table, None, None


def hash_encode_native(x: Tensor, table: Tensor, resolutions: Tensor, dense_mask: Tensor) -> Tensor:
    """Same contract as :func:`hash_encode_torch`, computed by the C++ kernels (CPU, float32).

    The spatial gradient is only computed when ``x.requires_grad``; the table gradient only when
    ``table.requires_grad``.
    """
    return _NativeHashEncode.apply(x.float().contiguous(), table, resolutions.to(torch.long).contiguous(),
                                   dense_mask.to(torch.bool).contiguous())


# ----------------------------------------------------------------------------------------------------------- module


def _tcnn_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import tinycudann  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


class HashEncoding(nn.Module):
    """Instant-NGP multiresolution hash encoding ``[N, 3] in [0,1]^3 -> [N, L * F]``.

    Parameters: ``self.table`` [L, T, F], initialised uniform(-1e-4, 1e-4).

    impl "tcnn": tiny-cuda-nn owns its parameters (``self.tcnn_encoding``) with its own layout and
    its own grid convention (vertex offset 0.5, ``scale = base * b^l - 1``), so ``self.table`` is None
    then and results differ numerically from the torch/native grid (same model class, not bitwise equal).
    """

    def __init__(self, cfg: HashEncodingConfig):
        super().__init__()
        self.cfg = cfg
        L, F = cfg.n_levels, cfg.n_features_per_level
        self.table_size = 2**cfg.log2_hashmap_size
        self.n_output_dims = L * F
        res = torch.tensor(level_resolutions(cfg), dtype=torch.long)
        self.register_buffer("resolutions", res, persistent=False)
        self.register_buffer("dense_mask", dense_level_mask(res, self.table_size), persistent=False)
        self.register_buffer("level_weights", None, persistent=False)
        self.impl = self._resolve_impl(cfg.impl, F)
        self.tcnn_encoding = None
        if self.impl == "tcnn":
            import tinycudann as tcnn

            growth = (
                math.exp((math.log(cfg.max_resolution) - math.log(cfg.base_resolution)) / (L - 1)) if L > 1 else 1.0
            )
            self.tcnn_encoding = tcnn.Encoding(
                n_input_dims=3,
                encoding_config={
                    "otype": "HashGrid",
                    "n_levels": L,
                    "n_features_per_level": F,
                    "log2_hashmap_size": cfg.log2_hashmap_size,
                    "base_resolution": cfg.base_resolution,
                    "per_level_scale": growth,
                },
            )
            self.table = None
        else:
            self.table = nn.Parameter(torch.empty(L, self.table_size, F).uniform_(-1e-4, 1e-4))

    @staticmethod
    def _resolve_impl(impl: str, n_features: int) -> str:
        native_ok = n_features in _NATIVE_FEATURES
        if impl == "auto":
            if _tcnn_available():
                return "tcnn"
            return "native" if native_ok and native_available() else "torch"
        if impl == "native" and not native_ok:
            raise ValueError(f"native hash encoding supports n_features_per_level in {_NATIVE_FEATURES}")
        if impl == "native" and not native_available():
            from nerf_mapping import native

            raise RuntimeError(f"HashEncoding impl='native' requested but the extension is unavailable: {native.error()}")
        if impl == "tcnn" and not _tcnn_available():
            raise RuntimeError("HashEncoding impl='tcnn' requested but CUDA / tinycudann is unavailable")
        if impl not in ("native", "torch", "tcnn"):
            raise ValueError(f"unknown hash encoding impl {impl!r}")
        return impl

    def set_level_weights(self, w: Tensor | None) -> None:
        """Per-level multiplier on the outputs (coarse-to-fine annealing); None = all ones."""
        if w is None:
            self.level_weights = None
            return
        w = torch.as_tensor(w, dtype=torch.float32)
        if w.shape != (self.cfg.n_levels,):
            raise ValueError(f"level weights must have shape [{self.cfg.n_levels}], got {tuple(w.shape)}")
        device = self.resolutions.device
        self.level_weights = w.to(device)

    def forward(self, x: Tensor) -> Tensor:
        """x: Tensor[..., 3] in [0, 1]^3 (clamped) -> Tensor[..., L * F]."""
        lead = x.shape[:-1]
        x = x.reshape(-1, 3)
        if self.impl == "tcnn":
            out = self.tcnn_encoding(x.clamp(0.0, 1.0)).float()
        elif self.impl == "native" and x.device.type == "cpu" and self.table.device.type == "cpu":
            out = hash_encode_native(x, self.table, self.resolutions, self.dense_mask)
        else:  # torch, or native asked for on a non-CPU device
            out = hash_encode_torch(x.to(self.table.dtype), self.table, self.resolutions, self.dense_mask)
        if self.level_weights is not None:
            out = out * self.level_weights.to(out.device).repeat_interleave(self.cfg.n_features_per_level)
        return out.reshape(*lead, self.n_output_dims)
