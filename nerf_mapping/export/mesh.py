"""Meshes and point clouds from a trained map: oriented surface points -> Poisson surface reconstruction.

An Instant-NGP map has no normals (nerfstudio's ``ns-export poisson`` therefore refuses it), so they are made here::

    snapshot(trainer)          copy of the field, occupancy grid and refined training-view poses, taken under the
                               trainer lock in well under a second: the export then runs beside a training thread
    surface_points(snap)       one ray per pixel of a coarse grid over every training view (coarser grid = fewer
                               points): the inference renderer (its whole loop in one native call), median
                               termination depth where the accumulated opacity is high, colour composited along the
                               ray, normal from the depth map's neighbours (the cross product of the back-projected
                               points left/right and up/down), oriented towards the camera
    clean_points(points)       crop to the bounds, voxel down-sampling (even density, averaged normals), Open3D
                               statistical outlier removal
    poisson_mesh(points)       Open3D screened Poisson (octree depth 9 by default), vertices with the lowest Poisson
                               density trimmed, cropped to the bounds, optional quadric decimation; vertex colours
                               come from the points

Why not density-gradient normals or marching cubes on the density: a NeRF's density is a noisy shell whose
level set depends on an arbitrary threshold and includes unobserved volume behind surfaces, while the median
termination depth is where the images put the surface. Why coarse grids over all views rather than full renders of
a few: the cost is rays x samples; the coverage of the scene comes from the number of viewpoints, the density of
points from the grid, and Poisson needs only ~1 point per octree cell.

Coordinates: the model frame, which for the online mapper is the ``map`` frame (refined poses, the drift correction
already inside); offline checkpoints of datasets that were normalised are written back in the dataset's frame
(:func:`to_data_frame`). Files are binary PLY written by Open3D (MeshLab, Open3D, CloudCompare read them).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch

from nerf_mapping.cameras import Cameras, generate_rays, pixel_centers
from nerf_mapping.rendering.renderer import RenderConfig, render_rays_inference


@dataclass
class MeshExportConfig:
    depth: int = 9
    """Poisson octree depth (1..12): the mesh resolution is the bounds' size / 2^depth."""
    num_points: int = 100_000
    """Rays cast over all training views together (each view gets a pixel grid of about num_points / views rays);
    the oriented point cloud keeps those that hit a surface."""
    min_opacity: float = 0.5
    """A ray yields a point when its accumulated opacity reaches this."""
    max_grazing_cos: float = 0.05
    """Points seen at |cos(normal, ray)| below this (grazing, or a depth discontinuity) are dropped."""
    voxel_size: float = 0.0
    """Down-sampling voxel (scene units); 0: the bounds' diagonal / 1024."""
    outlier_neighbors: int = 20
    """Statistical outlier removal: neighbours considered (0 = off)."""
    outlier_std: float = 2.0
    """Statistical outlier removal: points farther than mean + std x sigma from their neighbours are dropped."""
    density_quantile: float = 0.02
    """Mesh vertices whose Poisson density is below this quantile are removed (surface Poisson invented far from
    any point)."""
    target_triangles: int = 0
    """Quadric decimation to this many triangles (0 = keep all)."""
    bounds: tuple[float, ...] | None = None
    """Crop box [xmin, ymin, zmin, xmax, ymax, zmax] in the model frame; None: the map's scene box (bounded scenes)
    or the box spanned by the points' 1st-99th percentiles (unbounded ones)."""
    chunk: int = 8192
    """Rays per rendering chunk (bounds peak memory)."""

    def validate(self) -> "MeshExportConfig":
        if not 1 <= int(self.depth) <= 12:
            raise ValueError(f"depth must be in 1..12, got {self.depth}")
        if not 1000 <= int(self.num_points) <= 20_000_000:
            raise ValueError(f"num_points must be in 1000..20000000, got {self.num_points}")
        if not 0.0 < self.min_opacity <= 1.0:
            raise ValueError("min_opacity must be in (0, 1]")
        if not 0.0 <= self.density_quantile < 1.0:
            raise ValueError("density_quantile must be in [0, 1)")
        if self.target_triangles < 0:
            raise ValueError("target_triangles must be >= 0")
        if self.bounds is not None:
            b = [float(x) for x in self.bounds]
            if len(b) != 6 or not all(math.isfinite(x) for x in b) or not all(b[i] < b[i + 3] for i in range(3)):
                raise ValueError("bounds must be 6 finite numbers xmin ymin zmin xmax ymax zmax with min < max")
        return self


class MapSnapshot(NamedTuple):
    """What an export reads, detached from the (possibly still training) trainer."""

    field: torch.nn.Module
    grid: torch.nn.Module
    render_cfg: RenderConfig
    near: float
    far: float
    views: Cameras
    """Training views at their refined poses (model frame)."""
    render_inputs: dict
    """Extra inputs of novel-view renders (e.g. the mean appearance embedding)."""
    scene_box: np.ndarray
    """[2, 3] the map's box (model frame)."""
    unbounded: bool


class SurfacePoints(NamedTuple):
    xyz: np.ndarray  # [N,3] float64
    normals: np.ndarray  # [N,3] unit, towards the camera that saw the point
    rgb: np.ndarray  # [N,3] float in [0,1]
    view: np.ndarray | None = None  # [N] int64 index of the view whose ray gave the point
    pixel: np.ndarray | None = None  # [N,2] float32 (x, y) image coordinates of that ray


def _refined(trainer, cams: Cameras, ids: torch.Tensor) -> Cameras:
    """``cams`` (frames ``ids``) at their refined poses: every extension's ``transform_c2w``, as in training."""
    c2w = cams.c2w
    with torch.no_grad():
        for ext in trainer.extensions:
            c2w = ext.transform_c2w(c2w, ids)
    return dataclasses.replace(cams, c2w=c2w.detach().clone())


def training_views(trainer) -> Cameras:
    """The trainer's live frames as cameras at their refined poses."""
    ids, cams = trainer.frames.cameras()
    if len(ids) == 0:
        raise ValueError("the map has no keyframes yet: nothing to export")
    return _refined(trainer, cams, ids)


def checkpoint_views(trainer) -> Cameras:
    """Training views recorded in an offline checkpoint's ``extra`` (``train_c2w``, intrinsics, sizes) at their
    refined poses. Pinhole: a lens's distortion changes which pixel a ray belongs to, not where it meets the surface,
    and the export needs only rays that cover the scene."""
    extra = getattr(trainer, "extra", {}) or {}
    if "train_c2w" not in extra:
        raise ValueError("the checkpoint records no training views (train_c2w): nothing to cast rays from")
    K, size = extra["train_intrinsics"], extra["train_size"]
    cams = Cameras.create(extra["train_c2w"], K[:, 0], K[:, 1], K[:, 2], K[:, 3], size[:, 0], size[:, 1])
    return _refined(trainer, cams, torch.arange(len(cams)))


def snapshot(trainer, views: Cameras | None = None) -> MapSnapshot:
    """Copy what an export needs under the trainer lock (the training thread pauses only for the copy of the field,
    the grid and the views, not for the export). ``views``: cameras to cast from (default :func:`training_views`)."""
    with trainer.lock:
        if views is None:
            views = training_views(trainer)
        inputs = {}
        with torch.no_grad():
            for ext in trainer.extensions:
                inputs.update({k: v.detach().clone() if torch.is_tensor(v) else v
                               for k, v in ext.eval_render_inputs().items()})
        field, grid = copy.deepcopy(trainer.field), copy.deepcopy(trainer.grid)
    field.eval()
    for p in field.parameters():
        p.requires_grad_(False)
    box = trainer.field.scene_box.detach().numpy().astype(np.float64).copy()
    return MapSnapshot(field, grid, trainer.render_cfg, float(trainer.scene.near), float(trainer.scene.far), views,
                       inputs, box, bool(trainer.scene.unbounded))


def grid_size(width: int, height: int, rays: int) -> tuple[int, int]:
    """A (w, h) pixel grid with about ``rays`` cells and the image's aspect ratio (at least 8 x 8, at most the
    image)."""
    s = math.sqrt(max(rays, 1) / max(width * height, 1))
    return min(width, max(8, round(width * s))), min(height, max(8, round(height * s)))


@torch.no_grad()
def _render_surface(snap: MapSnapshot, origins: torch.Tensor, dirs: torch.Tensor):
    """Per ray: median termination distance, opacity, composited colour (the inference renderer, in one native call
    where it applies)."""
    out = render_rays_inference(snap.field, snap.grid, origins, dirs, snap.near, snap.far, snap.render_cfg,
                                torch.zeros(3), appearance=snap.render_inputs.get("appearance"), return_median=True)
    opacity = out["opacity"]
    rgb = out["rgb"] / opacity.clamp_min(1e-6)[:, None]  # black background: the surface's own colour
    return out["median_depth"], opacity, rgb


def surface_points(snap: MapSnapshot, cfg: MeshExportConfig,
                   progress: Callable[[int, int], None] | None = None) -> SurfacePoints:
    """Oriented, coloured surface points seen from every training view (see the module docstring)."""
    views = snap.views
    n_views = len(views)
    per_view = cfg.num_points / max(n_views, 1)
    xyz_all, nrm_all, rgb_all, view_all, pix_all = [], [], [], [], []
    for i in range(n_views):
        W, H = int(views.width[i]), int(views.height[i])
        gw, gh = grid_size(W, H, int(per_view))
        px, py = pixel_centers(gw, gh)
        px, py = px * (W / gw), py * (H / gh)  # the grid's cell centres in image pixels
        origins, dirs = generate_rays(views, i, px, py)
        valid = torch.isfinite(dirs).all(-1)
        dirs = torch.where(valid[:, None], dirs, torch.tensor([0.0, 0.0, -1.0]))
        parts = [_render_surface(snap, o, d) for o, d in zip(origins.split(cfg.chunk), dirs.split(cfg.chunk))]
        depth, opacity, rgb = (torch.cat([p[k] for p in parts]) for k in range(3))
        pts = (origins + dirs * depth[:, None]).reshape(gh, gw, 3)
        ok = (valid & (opacity >= cfg.min_opacity) & (depth > 0)).reshape(gh, gw)
        # normals from the depth map: neighbours on both sides, the pixel itself at the image border
        def shift(a, dy, dx):
            return torch.nn.functional.pad(a.permute(2, 0, 1)[None], (1, 1, 1, 1), mode="replicate")[
                0, :, 1 + dy:1 + dy + gh, 1 + dx:1 + dx + gw].permute(1, 2, 0)
        okf = ok[..., None].float()
        ok_nb = (shift(okf, 0, 1) * shift(okf, 0, -1) * shift(okf, 1, 0) * shift(okf, -1, 0))[..., 0] > 0
        du = shift(pts, 0, 1) - shift(pts, 0, -1)
        dv = shift(pts, 1, 0) - shift(pts, -1, 0)
        nrm = torch.linalg.cross(du, dv)
        nrm = nrm / torch.linalg.vector_norm(nrm, dim=-1, keepdim=True).clamp_min(1e-12)
        d3 = dirs.reshape(gh, gw, 3)
        cos = (nrm * d3).sum(-1)
        nrm = torch.where(cos[..., None] > 0, -nrm, nrm)  # towards the camera
        keep = ok & ok_nb & (cos.abs() >= cfg.max_grazing_cos) & torch.isfinite(nrm).all(-1)
        xyz_all.append(pts[keep].double().numpy())
        nrm_all.append(nrm[keep].double().numpy())
        rgb_all.append(rgb.reshape(gh, gw, 3)[keep].clamp(0, 1).double().numpy())
        view_all.append(np.full(int(keep.sum()), i, dtype=np.int64))
        pix_all.append(torch.stack([px, py], -1).reshape(gh, gw, 2)[keep].float().numpy())
        if progress is not None:
            progress(i + 1, n_views)
    return SurfacePoints(np.concatenate(xyz_all), np.concatenate(nrm_all), np.concatenate(rgb_all),
                         np.concatenate(view_all), np.concatenate(pix_all))


def resolve_bounds(snap: MapSnapshot, cfg: MeshExportConfig, xyz: np.ndarray | None = None) -> np.ndarray:
    """[2,3] crop box (see ``MeshExportConfig.bounds``)."""
    if cfg.bounds is not None:
        return np.asarray(cfg.bounds, dtype=np.float64).reshape(2, 3)
    if not snap.unbounded or xyz is None or len(xyz) == 0:
        return snap.scene_box
    lo, hi = np.percentile(xyz, 1, axis=0), np.percentile(xyz, 99, axis=0)
    pad = 0.05 * (hi - lo)
    return np.stack([lo - pad, hi + pad])


def to_open3d(points: SurfacePoints):
    import open3d as o3d

    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points.xyz))
    pcd.normals = o3d.utility.Vector3dVector(points.normals)
    pcd.colors = o3d.utility.Vector3dVector(points.rgb)
    return pcd


def clean_points(points: SurfacePoints, bounds: np.ndarray, cfg: MeshExportConfig):
    """Crop, voxel down-sample and remove statistical outliers -> Open3D point cloud (normals re-normalised)."""
    inside = np.all((points.xyz >= bounds[0]) & (points.xyz <= bounds[1]), axis=1)
    pcd = to_open3d(SurfacePoints(points.xyz[inside], points.normals[inside], points.rgb[inside]))
    voxel = cfg.voxel_size if cfg.voxel_size > 0 else float(np.linalg.norm(bounds[1] - bounds[0])) / 1024.0
    pcd = pcd.voxel_down_sample(voxel)
    if cfg.outlier_neighbors > 0 and len(pcd.points) > cfg.outlier_neighbors:
        pcd, _ = pcd.remove_statistical_outlier(cfg.outlier_neighbors, cfg.outlier_std)
    pcd.normalize_normals()
    return pcd


def poisson_mesh(pcd, bounds: np.ndarray, cfg: MeshExportConfig, threads: int = 0):
    """Screened Poisson on the oriented points -> trimmed, cropped (and decimated) Open3D triangle mesh."""
    import open3d as o3d

    if len(pcd.points) < 100:
        raise ValueError(f"only {len(pcd.points)} surface points: the map has no surface yet (train longer, or "
                         "lower min_opacity)")
    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        mesh, dens = o3d.geometry.TriangleMesh.create_from_point_cloud_poisson(
            pcd, depth=int(cfg.depth), n_threads=threads if threads > 0 else -1)
    dens = np.asarray(dens)
    if cfg.density_quantile > 0 and len(dens):
        mesh.remove_vertices_by_mask(dens < np.quantile(dens, cfg.density_quantile))
    mesh = mesh.crop(o3d.geometry.AxisAlignedBoundingBox(bounds[0], bounds[1]))
    if cfg.target_triangles and len(mesh.triangles) > cfg.target_triangles:
        mesh = mesh.simplify_quadric_decimation(int(cfg.target_triangles))
    mesh.remove_unreferenced_vertices()
    mesh.remove_degenerate_triangles()
    mesh.compute_vertex_normals()
    return mesh


def to_data_frame(geometry, world_transform: np.ndarray | None, world_scale: float = 1.0):
    """Move an Open3D geometry from the model frame back to the dataset's frame (offline checkpoints of normalised
    datasets: model = scale * (T @ data), see :func:`nerf_mapping.geometry.frames.transform_poses`)."""
    if world_transform is None:
        return geometry
    T = np.eye(4)
    T[:3, :4] = np.asarray(world_transform, dtype=np.float64).reshape(3, 4)
    if np.allclose(T, np.eye(4)) and world_scale == 1.0:
        return geometry
    S = np.diag([world_scale, world_scale, world_scale, 1.0])
    return geometry.transform(np.linalg.inv(S @ T))


class ExportResult(NamedTuple):
    path: Path
    n_points: int
    n_vertices: int
    n_triangles: int
    seconds: dict
    """Seconds per phase: points, clean, poisson, write, total."""
    geometry: object
    """The Open3D mesh (poisson) or point cloud (pointcloud), in the model frame."""


def export_geometry(snap: MapSnapshot, path: Path, cfg: MeshExportConfig, kind: str = "poisson",
                    progress: Callable[[int, int], None] | None = None, threads: int = 0,
                    world_transform: np.ndarray | None = None, world_scale: float = 1.0) -> ExportResult:
    """Points -> (``kind`` poisson) mesh -> ``path`` (binary PLY). The file is written atomically (temporary name,
    then rename), so a failed export never leaves a half-written file behind."""
    import open3d as o3d

    if kind not in ("poisson", "pointcloud"):
        raise ValueError(f"unknown export kind {kind!r} (poisson | pointcloud)")
    cfg.validate()
    t = {"start": time.perf_counter()}
    pts = surface_points(snap, cfg, progress)
    t["points"] = time.perf_counter()
    bounds = resolve_bounds(snap, cfg, pts.xyz)
    pcd = clean_points(pts, bounds, cfg)
    t["clean"] = time.perf_counter()
    if kind == "poisson":
        geom = poisson_mesh(pcd, bounds, cfg, threads)
        n_v, n_t = len(geom.vertices), len(geom.triangles)
    else:
        if len(pcd.points) == 0:
            raise ValueError("no surface points: the map has no surface yet")
        geom, n_v, n_t = pcd, len(pcd.points), 0
    t["poisson"] = time.perf_counter()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)  # Open3D picks the format from the suffix
    out = to_data_frame(copy.deepcopy(geom), world_transform, world_scale)
    write = o3d.io.write_triangle_mesh if kind == "poisson" else o3d.io.write_point_cloud
    if not write(str(tmp), out, write_ascii=False, compressed=False):
        raise OSError(f"could not write {tmp}")
    tmp.replace(path)
    t["write"] = time.perf_counter()
    seconds = {"points": t["points"] - t["start"], "clean": t["clean"] - t["points"],
               "poisson": t["poisson"] - t["clean"], "write": t["write"] - t["poisson"],
               "total": t["write"] - t["start"]}
    return ExportResult(path, len(pcd.points), n_v, n_t, seconds, geom)
