"""Training frames that can grow while training runs (the online node adds keyframes from another thread).

Pixels are kept as uint8 per frame; ray batches are drawn uniformly over all stored pixels. The store holds whatever
it is given: which frames to keep is its owner's decision (offline: every training frame; online: the mapper's
keyframe set, :class:`nerf_mapping.mapping.keyframes.KeyframeSet`, which evicts with :meth:`FrameStore.remove`).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from nerf_mapping.cameras import Cameras


@dataclass
class RayBatch:
    frame_ids: torch.Tensor  # [R] int64 stable frame ids (index into pose corrections)
    px: torch.Tensor  # [R] float pixel x (centre = +0.5)
    py: torch.Tensor  # [R]
    rgb: torch.Tensor  # [R,3] float in [0,1]
    depth: torch.Tensor | None  # [R] scene units, 0 = invalid
    mask: torch.Tensor | None  # [R] bool


class FrameStore:
    """Thread-safe store of training frames with uniform pixel sampling.

    Frame ids are stable (they index per-frame pose parameters); ``slots`` are the live frames.
    """

    def __init__(self, seed: int = 0):
        self._lock = threading.Lock()
        self._images: dict[int, torch.Tensor] = {}
        self._depths: dict[int, torch.Tensor] = {}
        self._masks: dict[int, torch.Tensor] = {}
        self._cameras: dict[int, Cameras] = {}
        self._stamps: dict[int, float] = {}
        self._next_id = 0
        self._cache = None
        self._gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self._images)

    @property
    def num_ids(self) -> int:
        """Number of frame ids ever issued (size needed for per-frame parameters)."""
        return self._next_id

    def add(self, image: torch.Tensor, camera: Cameras, depth=None, mask=None, stamp: float | None = None) -> int:
        """Add one frame. image uint8 [H,W,3]; camera: Cameras of length 1; stamp: capture time in seconds (optional;
        the pose drift spline uses it). Returns its stable frame id."""
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be uint8 [H,W,3], got {tuple(image.shape)} {image.dtype}")
        if len(camera) != 1:
            raise ValueError("camera must hold exactly one camera")
        h, w = image.shape[:2]
        if int(camera.width[0]) != w or int(camera.height[0]) != h:
            raise ValueError(f"camera size {int(camera.width[0])}x{int(camera.height[0])} != image size {w}x{h}")
        with self._lock:
            fid = self._next_id
            self._next_id += 1
            self._images[fid] = image.contiguous()
            self._cameras[fid] = camera
            if depth is not None:
                self._depths[fid] = depth.float().contiguous()
            if mask is not None:
                self._masks[fid] = mask.bool().contiguous()
            if stamp is not None:
                self._stamps[fid] = float(stamp)
            self._cache = None
        return fid

    def remove(self, fid: int) -> None:
        """Drop frame ``fid`` (its id is never reused: per-frame parameters keep their rows)."""
        with self._lock:
            for d in (self._images, self._depths, self._masks, self._cameras, self._stamps):
                d.pop(fid, None)
            self._cache = None

    def frame_ids(self) -> list[int]:
        with self._lock:
            return sorted(self._images)

    def camera(self, fid: int) -> Cameras:
        return self._cameras[fid]

    def camera_if_live(self, fid: int) -> Cameras | None:
        """Camera of frame ``fid``, or None when it was evicted: another thread may add frames (and so evict one)
        between a caller's listing of the ids and its reading of a camera."""
        with self._lock:
            return self._cameras.get(fid)

    def stamp(self, fid: int) -> float | None:
        """Capture time (seconds) of frame ``fid``, or None when it was added without one."""
        return self._stamps.get(fid)

    def image(self, fid: int) -> torch.Tensor:
        return self._images[fid]

    def _build_cache(self):
        ids = sorted(self._images)
        sizes = torch.tensor([self._images[i].shape[0] * self._images[i].shape[1] for i in ids], dtype=torch.long)
        offsets = torch.cumsum(sizes, 0)
        cams = Cameras.cat([self._cameras[i] for i in ids])
        flat = torch.cat([self._images[i].reshape(-1, 3) for i in ids])
        has_depth = len(self._depths) == len(ids) and len(ids) > 0
        has_mask = len(self._masks) == len(ids) and len(ids) > 0
        depth = torch.cat([self._depths[i].reshape(-1) for i in ids]) if has_depth else None
        mask = torch.cat([self._masks[i].reshape(-1) for i in ids]) if has_mask else None
        self._cache = (torch.tensor(ids, dtype=torch.long), sizes, offsets, cams, flat, depth, mask)

    def cameras(self) -> tuple[torch.Tensor, Cameras]:
        """(frame ids [F], Cameras [F]) of the live frames, in id order."""
        with self._lock:
            if self._cache is None:
                self._build_cache()
            return self._cache[0], self._cache[3]

    def sample(self, n_rays: int) -> tuple[RayBatch, Cameras, torch.Tensor]:
        """Draw ``n_rays`` pixels uniformly over all pixels.

        Returns (batch, cameras of the live frames, slot [R] index of each ray's frame into those cameras).
        """
        with self._lock:
            if not self._images:
                raise RuntimeError("no frames to train on")
            if self._cache is None:
                self._build_cache()
            ids, sizes, offsets, cams, flat, depth, mask = self._cache
        total = int(offsets[-1])
        p = torch.randint(0, total, (n_rays,), generator=self._gen)
        slot = torch.searchsorted(offsets, p, right=True)
        local = p - (offsets[slot] - sizes[slot])
        w = cams.width[slot]
        px = (local % w).float() + 0.5
        py = (local // w).float() + 0.5
        rgb = flat[p].float() / 255.0
        batch = RayBatch(ids[slot], px, py, rgb, depth[p] if depth is not None else None,
                         mask[p] if mask is not None else None)
        return batch, cams, slot
