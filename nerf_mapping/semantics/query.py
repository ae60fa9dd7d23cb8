"""Text queries against a map's language field: an open-vocabulary 3D segmentation, and 2D relevancy images.

3D (what the node's ``query_segmentation`` and ``nerf-mapping query`` return):

1. Candidate points: the map's surface as the keyframes see it, from the mesh exporter's
   :func:`~nerf_mapping.export.mesh.surface_points` (one ray per cell of a coarse pixel grid over every keyframe at its
   refined pose; the median termination depth where the opacity is at least 0.5), cropped to the scene box. They
   cost seconds (every keyframe is rendered), so callers compute them once per map state and keep them
   (:class:`Candidates`); the node refreshes them in the background.
2. Per query: the language field's unit feature at every candidate (one forward pass of a small hash grid and MLP
   over the candidates: cheap beside the candidates themselves; timings in docs/results/segmentation.md), LERF
   relevancy against the canonical negatives
   (:func:`~nerf_mapping.semantics.relevancy.relevancy`), and the points at or above the threshold, coloured by
   relevancy (matplotlib's turbo from the threshold to 1).

Why points at the surface rather than the occupancy grid's cells: the grid's cells are coarse (centimetres across
even in a room-sized box) and fill volumes behind surfaces that no keyframe saw; rendered surface points are where
the language loss was applied (rays with opacity >= 0.5), so their features are the trained ones.

2D: :func:`relevancy_image` renders the language field along a view's rays with the radiance field's weights (the
same compositing as training) and scores every pixel; transparent pixels (opacity < 0.5) score 0.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
import torch

from nerf_mapping.semantics.relevancy import DEFAULT_NEGATIVES, DEFAULT_TAU, relevancy
from nerf_mapping.semantics.teachers import check_text

MAX_NEGATIVES = 32


@dataclass
class QueryConfig:
    threshold: float = 0.5
    """Points (pixels) with relevancy >= this are the segmentation."""
    negatives: tuple[str, ...] = DEFAULT_NEGATIVES
    """Canonical negatives (LERF's)."""
    tau: float = DEFAULT_TAU
    """Softmax temperature of the relevancy."""
    num_points: int = 100_000
    """Rays cast over the keyframes for the candidate points."""

    def validate(self) -> "QueryConfig":
        if not (isinstance(self.threshold, (int, float)) and math.isfinite(self.threshold)
                and 0.0 <= self.threshold <= 1.0):
            raise ValueError(f"threshold must be within [0, 1], got {self.threshold!r}")
        if not self.negatives or len(self.negatives) > MAX_NEGATIVES:
            raise ValueError(f"give 1..{MAX_NEGATIVES} negatives, got {len(self.negatives)}")
        self.negatives = tuple(check_text(n) for n in self.negatives)
        if not (math.isfinite(self.tau) and self.tau > 0):
            raise ValueError(f"tau must be > 0, got {self.tau!r}")
        if not 1000 <= self.num_points <= 2_000_000:
            raise ValueError(f"num_points must be within 1000..2000000, got {self.num_points}")
        return self


class Candidates(NamedTuple):
    """Surface points that queries score (model frame)."""

    xyz: torch.Tensor  # [N,3] float32
    rgb: torch.Tensor  # [N,3] float32 in [0,1], the map's colour
    step: int  # the trainer step they were computed at
    seconds: float  # what computing them took
    view: np.ndarray  # [N] index of the view (keyframe order) whose ray gave each point
    pixel: np.ndarray  # [N,2] (x, y) pixel of that ray in its view


class Segmentation(NamedTuple):
    text: str
    teacher: str
    xyz: np.ndarray  # [M,3] float32, the points at or above the threshold
    relevancy: np.ndarray  # [M] float32
    colors: np.ndarray  # [M,3] uint8 heat colours
    n_candidates: int
    seconds: float  # features + relevancy + selection (candidates excluded)
    all_relevancy: torch.Tensor  # [N] relevancy of every candidate (benchmarks, pictures)


def language_snapshot(trainer):
    """A frozen copy of ``trainer``'s language field (a small grid and MLP: cheap to copy), so a query never reads
    parameters while the training thread updates them. ValueError when it has none.

    Taken without the trainer lock, on purpose: renders hold that lock for seconds (the periodic render, a
    RenderView), and a query would wait behind them (it did in the demo: docs/results/segmentation.md). The field's
    tensors are only ever updated
    in place (never replaced or resized), so a copy racing an optimiser step holds some values of step k and some of
    k+1, which is harmless for a query."""
    from nerf_mapping.semantics.field import find_language_field

    ext = find_language_field(trainer)
    if ext is None:
        raise ValueError("the map has no language field")
    return ext.frozen_copy()


def candidate_points(snap, num_points: int = 100_000,
                     progress: Callable[[int, int], None] | None = None) -> Candidates:
    """Surface points of a map snapshot (:func:`nerf_mapping.export.mesh.snapshot`) inside its scene box (percentile
    bounds for unbounded maps)."""
    from nerf_mapping.export.mesh import MeshExportConfig, resolve_bounds, surface_points

    t0 = time.perf_counter()
    cfg = MeshExportConfig(num_points=num_points).validate()
    pts = surface_points(snap, cfg, progress)
    box = resolve_bounds(snap, cfg, pts.xyz)
    inside = np.all((pts.xyz >= box[0]) & (pts.xyz <= box[1]), axis=1)
    xyz = torch.from_numpy(pts.xyz[inside]).float()
    rgb = torch.from_numpy(pts.rgb[inside]).float()
    return Candidates(xyz, rgb, -1, time.perf_counter() - t0, pts.view[inside], pts.pixel[inside])


@torch.no_grad()
def point_features(field, xyz: torch.Tensor, chunk: int = 1 << 16) -> torch.Tensor:
    """[N,D] unit language features at world points ``xyz`` [N,3] (chunked: bounded memory)."""
    if xyz.shape[0] == 0:
        return torch.zeros(0, field.dim)
    return torch.cat([field(x) for x in xyz.split(chunk)])


def text_relevancy(teacher, features: torch.Tensor, text: str, cfg: QueryConfig) -> torch.Tensor:
    """[N] relevancy of ``features`` to ``text`` against ``cfg.negatives`` in ``teacher``'s space."""
    q = teacher.text_features([check_text(text)])[0]
    neg = teacher.text_features(list(cfg.negatives))
    return relevancy(features, q, neg, cfg.tau)


def heat_colors(r: np.ndarray | torch.Tensor, lo: float = 0.5) -> np.ndarray:
    """uint8 [N,3] turbo colours of relevancy ``r`` scaled from ``lo`` (blue) to 1 (red)."""
    from matplotlib import colormaps

    r = np.asarray(r, dtype=np.float64)
    x = np.clip((r - lo) / max(1.0 - lo, 1e-6), 0.0, 1.0)
    return (colormaps["turbo"](x)[:, :3] * 255.0 + 0.5).astype(np.uint8)


def segment(field, teacher, cands: Candidates, text: str, cfg: QueryConfig) -> Segmentation:
    """Score every candidate against ``text``; the points at or above ``cfg.threshold``."""
    text = check_text(text)
    if field.teacher and field.teacher != teacher.name:
        raise ValueError(f"the language field lives in the {field.teacher!r} teacher's space, not {teacher.name!r}")
    t0 = time.perf_counter()
    feats = point_features(field, cands.xyz)
    r = text_relevancy(teacher, feats, text, cfg)
    keep = r >= cfg.threshold
    rel = r[keep].numpy().astype(np.float32)
    return Segmentation(text, teacher.name, cands.xyz[keep].numpy().astype(np.float32), rel,
                        heat_colors(rel, cfg.threshold), int(cands.xyz.shape[0]), time.perf_counter() - t0, r)


@torch.no_grad()
def render_language(snap, field, cameras, index: int, c2w: torch.Tensor | None = None,
                    chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render ``field`` for camera ``index`` of ``cameras`` (at ``c2w`` [3,4] when given) with the map snapshot's
    weights: (features [H,W,D] unit where the ray hit something, opacity [H,W], the map's rgb [H,W,3])."""
    from nerf_mapping.cameras import image_rays
    from nerf_mapping.rendering.renderer import render_rays_inference

    w, h = int(cameras.width[index]), int(cameras.height[index])
    origins, dirs = image_rays(cameras, index, c2w)
    valid = torch.isfinite(dirs).all(-1)
    dirs = torch.where(valid[:, None], dirs, torch.tensor([0.0, 0.0, -1.0]))
    feats, opac, rgbs = [], [], []
    bg = torch.zeros(3)
    for o, d in zip(origins.split(chunk), dirs.split(chunk)):
        out = render_rays_inference(snap.field, snap.grid, o, d, snap.near, snap.far, snap.render_cfg, bg,
                                    appearance=snap.render_inputs.get("appearance"), return_samples=True)
        feats.append(field.render(out, o.shape[0]))
        opac.append(out["opacity"])
        rgbs.append(out["rgb"])
    opacity = torch.cat(opac) * valid
    return (torch.cat(feats).reshape(h, w, -1), opacity.reshape(h, w),
            torch.cat(rgbs).clamp(0, 1).reshape(h, w, 3))


def view_relevancy(snap, field, teacher, cameras, index: int, text: str, cfg: QueryConfig,
                   c2w: torch.Tensor | None = None, min_opacity: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """(relevancy [H,W] of a rendered view to ``text``, 0 where the opacity is below ``min_opacity``; the view's
    rendered rgb [H,W,3])."""
    feats, opacity, rgb = render_language(snap, field, cameras, index, c2w)
    h, w = opacity.shape
    r = text_relevancy(teacher, feats.reshape(h * w, -1), text, cfg).reshape(h, w)
    return torch.where(opacity >= min_opacity, r, torch.zeros_like(r)), rgb


def relevancy_image(snap, field, teacher, cameras, index: int, text: str, cfg: QueryConfig,
                    c2w: torch.Tensor | None = None, min_opacity: float = 0.5) -> torch.Tensor:
    """[H,W] relevancy of a rendered view to ``text`` (0 where the opacity is below ``min_opacity``)."""
    return view_relevancy(snap, field, teacher, cameras, index, text, cfg, c2w, min_opacity)[0]


def relevancy_overlay(rgb: torch.Tensor, r: torch.Tensor, threshold: float) -> np.ndarray:
    """uint8 [H,W,3]: the rendered view in dim grey, with heat colours where the relevancy reaches the threshold."""
    grey = (rgb.mean(-1, keepdim=True).expand(-1, -1, 3).numpy() * 0.6 * 255.0).astype(np.uint8)
    heat = heat_colors(r.reshape(-1).numpy(), threshold).reshape(*r.shape, 3)
    sel = (r >= threshold).numpy()
    out = grey.copy()
    out[sel] = heat[sel]
    return out


def write_segmentation_ply(path, seg: Segmentation, world_transform: np.ndarray | None = None,
                           world_scale: float = 1.0) -> None:
    """A binary PLY of the segmented points: x y z, red green blue (heat) and a float ``relevancy`` property,
    written atomically; points mapped by ``world_transform`` / ``world_scale`` (a normalised dataset's own frame)."""
    import os
    from pathlib import Path

    xyz = seg.xyz.astype(np.float64)
    if world_transform is not None:
        T = np.asarray(world_transform, dtype=np.float64)
        xyz = (xyz / world_scale) @ T[:3, :3].T + T[:3, 3]
    n = xyz.shape[0]
    rec = np.zeros(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"),
                             ("blue", "u1"), ("relevancy", "<f4")])
    rec["x"], rec["y"], rec["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    rec["red"], rec["green"], rec["blue"] = seg.colors[:, 0], seg.colors[:, 1], seg.colors[:, 2]
    rec["relevancy"] = seg.relevancy
    header = ("ply\nformat binary_little_endian 1.0\n"
              f"comment nerf_mapping segmentation: text {seg.text!r}, teacher {seg.teacher}\n"
              f"element vertex {n}\nproperty float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nproperty float relevancy\nend_header\n")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(header.encode("utf-8", "replace"))
        f.write(rec.tobytes())
    os.replace(tmp, path)
