"""Renders that answer within a time budget: a running cost model and resolution scaling.

An interactive caller (the node's RenderView, a viewer) wants a picture now rather than a perfect one later. The
cost of a render is about proportional to its rays (times the samples each ray needs, which the map's state sets:
a young, hazy map needs several times the samples of a trained one), so the recent renders' seconds per ray predict
the next one. When the prediction at the requested size exceeds the budget, the view is rendered
at the largest size that fits and upsampled to the requested one -- the dynamic resolution of interactive NeRF
viewers (nerfstudio's viewer lowers the resolution while the camera moves). The picture is blurrier, never late.

The prediction is an average, and one view can cost far more than another (a view into a hazy, untrained corner),
so a size that fits on average can still overrun the budget (docs/results/online.md). The chosen size is therefore
rendered coarse to fine (:func:`lattice_order`: every 4th pixel of every 4th row, then every 2nd, then the rest)
against a deadline: a view that runs late stops after its last complete lattice and is upsampled from it (a half or
a quarter of the chosen size), which bounds the latency by the budget plus one chunk of rays instead of by the
prediction's error.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

__all__ = ["RenderCost", "budget_size", "lattice_order", "lattice_image", "upsample_render"]


@dataclass
class RenderCost:
    """Exponential moving average of the seconds per rendered ray (thread-safe)."""

    smoothing: float = 0.5
    """Weight of the newest render: the map's cost per ray changes as it trains, so recent renders count most."""
    seconds_per_ray: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def update(self, seconds: float, rays: int) -> None:
        if rays <= 0 or not math.isfinite(seconds) or seconds < 0:
            return
        c = seconds / rays
        with self._lock:
            prev = self.seconds_per_ray
            self.seconds_per_ray = c if prev is None else prev + self.smoothing * (c - prev)


def budget_size(width: int, height: int, seconds_per_ray: float | None, budget_s: float,
                min_width: int = 32, safety: float = 0.7) -> tuple[int, int]:
    """The largest size (same aspect ratio, at most ``width`` x ``height``, at least ``min_width`` wide) whose
    predicted time fits ``safety * budget_s``. The full size when the budget is off (<= 0) or nothing is known.

    ``safety`` 0.7: the call's own overheads (the wait for the running training step, the upsampling) come on top of
    the predicted time, so the size is planned with a margin below the deadline (85 % of the time left) that cuts a
    late view to a coarser lattice; with a smaller margin many views ran into the deadline (docs/results/online.md)."""
    if budget_s <= 0 or seconds_per_ray is None or seconds_per_ray <= 0:
        return width, height
    max_rays = safety * budget_s / seconds_per_ray
    if max_rays >= width * height:
        return width, height
    s = math.sqrt(max_rays / (width * height))
    w = max(min(width, min_width), int(width * s))
    h = max(1, round(w * height / width))
    return w, h


def upsample_render(out: dict[str, torch.Tensor], height: int, width: int) -> dict[str, torch.Tensor]:
    """Resize a render's [h, w, *] images to ``height`` x ``width``: colours and features bilinearly, depth and
    opacity by the nearest pixel (interpolating across a depth edge would invent surfaces in between)."""
    res = {}
    for k, v in out.items():
        if not torch.is_tensor(v) or v.dim() < 2 or v.shape[:2] == (height, width):
            res[k] = v
            continue
        x = v.reshape(v.shape[0], v.shape[1], -1).permute(2, 0, 1)[None].float()
        if k in ("depth", "opacity"):
            y = F.interpolate(x, size=(height, width), mode="nearest")
        else:
            y = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
        res[k] = y[0].permute(1, 2, 0).reshape(height, width, *v.shape[2:]).to(v.dtype)
    return res


def lattice_order(width: int, height: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Row-major pixel indices of a ``width`` x ``height`` image, coarse to fine: the stride-4 lattice (pixels whose
    row and column are multiples of 4), then the rest of the stride-2 lattice, then every other pixel. Returns the
    order [W*H] and how many pixels complete the stride-4 and the stride-2 lattices."""
    y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    y, x = y.reshape(-1), x.reshape(-1)
    rank = torch.full_like(x, 2)
    rank[(x % 2 == 0) & (y % 2 == 0)] = 1
    rank[(x % 4 == 0) & (y % 4 == 0)] = 0
    order = torch.argsort(rank, stable=True)
    return order, (int((rank == 0).sum()), int((rank <= 1).sum()))


def lattice_image(out: dict[str, torch.Tensor], rendered: int, counts: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The finest complete lattice of a render stopped after ``rendered`` pixels of :func:`lattice_order` (``out``:
    full-size [H, W, *] images, unrendered pixels undefined): the images themselves when every pixel was rendered,
    else every 2nd or every 4th pixel of every 2nd or 4th row, to be upsampled. The lattice's pixel centres sit a
    quarter (half) of its cell off those of a camera of its size: sub-pixel, on a picture already upsampled."""
    n = next(iter(v for v in out.values() if torch.is_tensor(v) and v.dim() >= 2)).shape[:2].numel()
    if rendered >= n:
        return out
    stride = 2 if rendered >= counts[1] else 4
    if rendered < counts[0]:
        raise ValueError(f"a render stopped before its coarsest lattice ({rendered} of {counts[0]} pixels)")
    return {k: (v[::stride, ::stride] if torch.is_tensor(v) and v.dim() >= 2 else v) for k, v in out.items()}
