"""Training frames that can grow while training runs (the online node adds keyframes from another thread).

Pixels are kept as uint8 per frame; ray batches are drawn uniformly over all stored pixels. The store holds whatever
it is given: which frames to keep is its owner's decision (offline: every training frame; online: the mapper's
keyframe set, :class:`nerf_mapping.mapping.keyframes.KeyframeSet`, which evicts with :meth:`FrameStore.remove`).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from nerf_mapping.cameras import Cameras, camera_directions, z_depth_to_distance


@dataclass
class RayBatch:
    frame_ids: torch.Tensor  # [R] int64 stable frame ids (index into pose corrections)
    px: torch.Tensor  # [R] float pixel x (centre = +0.5)
    py: torch.Tensor  # [R]
    rgb: torch.Tensor  # [R,3] float in [0,1]
    depth: torch.Tensor | None  # [R] z-depth (along the optical axis) in scene units, 0 = invalid
    mask: torch.Tensor | None  # [R] bool
    dirs_cam: torch.Tensor | None = None  # [R,3] unit camera-frame directions (the trainer fills them in)
    range_rays: "CameraRays | None" = None  # rays without colour (LiDAR returns), drawn with the pixels
    range_out: dict | None = None  # the trainer's render of ``range_rays``


@dataclass
class CameraRays:
    """Range rays without colour (LiDAR returns, a depth camera off the colour grid) in their keyframe's camera frame
    (the model's OpenGL axes), so that they move with the keyframe's refined pose: origins [N,3], unit directions
    [N,3], measured ranges [N] (scene units along the direction). Sampled batches also carry ``frame_ids`` [N] and
    ``slot`` [N] (index into the live cameras of the same sample)."""

    origins: torch.Tensor
    directions: torch.Tensor
    ranges: torch.Tensor
    frame_ids: torch.Tensor | None = None
    slot: torch.Tensor | None = None

    @staticmethod
    def from_points(origins: torch.Tensor, points: torch.Tensor) -> "CameraRays":
        """Rays from sensor origins [N,3] to returns [N,3] (same frame)."""
        o = torch.as_tensor(origins, dtype=torch.float32).reshape(-1, 3)
        v = torch.as_tensor(points, dtype=torch.float32).reshape(-1, 3) - o
        r = torch.linalg.vector_norm(v, dim=-1)
        keep = torch.isfinite(r) & (r > 1e-6)
        return CameraRays(o[keep].contiguous(), (v[keep] / r[keep, None]).contiguous(), r[keep].contiguous())

    def __len__(self) -> int:
        return int(self.ranges.shape[0])

    def subset(self, idx: torch.Tensor) -> "CameraRays":
        return CameraRays(self.origins[idx], self.directions[idx], self.ranges[idx],
                          None if self.frame_ids is None else self.frame_ids[idx],
                          None if self.slot is None else self.slot[idx])


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
        self._ranges: dict[int, CameraRays] = {}
        self._next_id = 0
        self._cache = None
        self._gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self._images)

    @property
    def num_ids(self) -> int:
        """Number of frame ids ever issued (size needed for per-frame parameters)."""
        return self._next_id

    def add(self, image: torch.Tensor, camera: Cameras, depth=None, mask=None, stamp: float | None = None,
            ranges: CameraRays | None = None) -> int:
        """Add one frame. image uint8 [H,W,3]; camera: Cameras of length 1; depth: z-depth [H,W] in scene units (0 =
        none) on the image's grid; stamp: capture time in seconds (optional; the pose drift spline uses it); ranges:
        range rays in the frame's camera frame (LiDAR returns). Returns its stable frame id."""
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
                if tuple(depth.shape) != (h, w):
                    raise ValueError(f"depth {tuple(depth.shape)} is not on the image's {h}x{w} grid")
                self._depths[fid] = depth.float().contiguous()
            if ranges is not None and len(ranges) > 0:
                self._ranges[fid] = ranges
            if mask is not None:
                self._masks[fid] = mask.bool().contiguous()
            if stamp is not None:
                self._stamps[fid] = float(stamp)
            self._cache = None
        return fid

    def remove(self, fid: int) -> None:
        """Drop frame ``fid`` (its id is never reused: per-frame parameters keep their rows)."""
        with self._lock:
            for d in (self._images, self._depths, self._masks, self._cameras, self._stamps, self._ranges):
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

    def depth(self, fid: int) -> torch.Tensor | None:
        """z-depth [H,W] of frame ``fid`` (scene units, 0 = none), or None."""
        return self._depths.get(fid)

    def range_rays(self, fid: int) -> CameraRays | None:
        return self._ranges.get(fid)

    @property
    def has_range_rays(self) -> bool:
        """Whether any live frame carries range rays without colour (LiDAR returns)."""
        return bool(self._ranges)

    @property
    def has_range(self) -> bool:
        """Whether any live frame carries range data (depth or range rays)."""
        return bool(self._depths) or bool(self._ranges)

    def range_rays_world(self, fid: int, max_rays: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """World rays (origins [N,3], unit directions [N,3], ranges [N]) of frame ``fid``'s range data at its current
        camera pose: an even subset of at most ``max_rays`` of its depth pixels and of its range rays (None without
        range data or when the frame was evicted)."""
        with self._lock:
            cam, depth, rr = self._cameras.get(fid), self._depths.get(fid), self._ranges.get(fid)
        if cam is None or (depth is None and rr is None):
            return None
        return world_range_rays(cam, depth, rr, max_rays)

    def _sample_ranges(self, n: int, ids: torch.Tensor, rids: list[int], rays: list[CameraRays]) -> CameraRays:
        """``n`` range rays drawn uniformly over the frames ``rids``' range rays ``rays``, with ``frame_ids`` and
        ``slot`` (index into ``ids``, the live frames of the same sample)."""
        sizes = torch.tensor([len(r) for r in rays], dtype=torch.long)
        offsets = torch.cumsum(sizes, 0)
        p = torch.randint(0, int(offsets[-1]), (n,), generator=self._gen)
        k = torch.searchsorted(offsets, p, right=True)
        local = p - (offsets[k] - sizes[k])
        o = torch.empty(n, 3)
        d = torch.empty(n, 3)
        r = torch.empty(n)
        for j in torch.unique(k).tolist():
            m = k == j
            o[m], d[m], r[m] = rays[j].origins[local[m]], rays[j].directions[local[m]], rays[j].ranges[local[m]]
        fids = torch.tensor(rids, dtype=torch.long)[k]
        return CameraRays(o, d, r, fids, torch.searchsorted(ids, fids))

    def _build_cache(self):
        ids = sorted(self._images)
        sizes = torch.tensor([self._images[i].shape[0] * self._images[i].shape[1] for i in ids], dtype=torch.long)
        offsets = torch.cumsum(sizes, 0)
        cams = Cameras.cat([self._cameras[i] for i in ids])
        flat = torch.cat([self._images[i].reshape(-1, 3) for i in ids])
        has_depth = len(self._depths) > 0  # frames without depth (a keyframe whose depth image was lost) read 0
        has_mask = len(self._masks) == len(ids) and len(ids) > 0
        depth = torch.cat([self._depths[i].reshape(-1) if i in self._depths
                           else torch.zeros(self._images[i].shape[0] * self._images[i].shape[1]) for i in ids]) \
            if has_depth else None
        mask = torch.cat([self._masks[i].reshape(-1) for i in ids]) if has_mask else None
        self._cache = (torch.tensor(ids, dtype=torch.long), sizes, offsets, cams, flat, depth, mask)

    def cameras(self) -> tuple[torch.Tensor, Cameras]:
        """(frame ids [F], Cameras [F]) of the live frames, in id order."""
        with self._lock:
            if self._cache is None:
                self._build_cache()
            return self._cache[0], self._cache[3]

    def sample(self, n_rays: int, n_range: int = 0) -> tuple[RayBatch, Cameras, torch.Tensor]:
        """Draw ``n_rays`` pixels uniformly over all pixels, and ``n_range`` range rays (``batch.range_rays``, None
        when no frame has any) uniformly over all range rays, from the same snapshot of the live frames.

        Returns (batch, cameras of the live frames, slot [R] index of each ray's frame into those cameras).
        """
        with self._lock:
            if not self._images:
                raise RuntimeError("no frames to train on")
            if self._cache is None:
                self._build_cache()
            ids, sizes, offsets, cams, flat, depth, mask = self._cache
            rids = sorted(self._ranges) if n_range > 0 else []
            rays = [self._ranges[i] for i in rids]
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
        if rids:
            batch.range_rays = self._sample_ranges(n_range, ids, rids, rays)
        return batch, cams, slot


def world_range_rays(camera: Cameras, depth: torch.Tensor | None, rays: CameraRays | None, max_rays: int
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """World rays (origins [N,3], unit directions [N,3], ranges [N]) of a frame's range data at ``camera``'s pose
    (one camera): an even subset of at most ``max_rays`` of the pixels of its z-depth image ``depth`` (on the camera's
    grid, 0 = none) and of its camera-frame range rays ``rays``."""
    o_l, d_l, r_l = [], [], []
    if depth is not None:
        v, u = torch.nonzero(depth > 0, as_tuple=True)
        if u.numel() > max_rays:
            sel = torch.linspace(0, u.numel() - 1, max_rays).round().long()
            u, v = u[sel], v[sel]
        d = camera_directions(camera, torch.zeros_like(u), u.float() + 0.5, v.float() + 0.5)
        o_l.append(torch.zeros_like(d))
        d_l.append(d)
        r_l.append(z_depth_to_distance(depth[v, u].float(), d))
    if rays is not None and len(rays):
        sub = rays if len(rays) <= max_rays else rays.subset(torch.linspace(0, len(rays) - 1, max_rays).round().long())
        o_l.append(sub.origins)
        d_l.append(sub.directions)
        r_l.append(sub.ranges)
    if not o_l:
        e = torch.zeros(0, 3)
        return e, e, torch.zeros(0)
    c2w = camera.c2w[0].float()
    return torch.cat(o_l) @ c2w[:, :3].T + c2w[:, 3], torch.cat(d_l) @ c2w[:, :3].T, torch.cat(r_l)
