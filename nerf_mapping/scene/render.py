"""CPU renderer for the demo scene: open3d RaycastingScene (Embree) finds the hits, numpy does the shading.

Shading = ambient + point lights (Lambert, inverse-square-ish falloff, hard shadows via ``test_occlusions``) with
Blinn-Phong specular on glossy materials. Albedo comes from procedural solid textures evaluated at the 3D hit point.
Colours are shaded in linear space and encoded with a 2.2 gamma.

Pixel convention (docs/CONTRACTS.md): the centre of pixel (col i, row j) is (i + 0.5, j + 0.5). Depth and labels come
from the pixel-centre ray; colour optionally averages an s x s grid of sub-pixel rays (anti-aliasing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from .layout import LabeledMesh
from .textures import TEXTURES


@dataclass
class PointLight:
    position: tuple[float, float, float]
    intensity: float = 1.0
    falloff: float = 0.15  # attenuation = intensity / (1 + falloff * dist^2): softer than physical 1/d^2 (no exposure)


@dataclass
class LightingConfig:
    ambient: float = 0.3
    lights: list[PointLight] = field(
        default_factory=lambda: [PointLight((-0.9, -0.7, 2.35), 0.95), PointLight((1.1, 0.8, 2.35), 0.75)]
    )
    shadows: bool = True
    gamma: float = 2.2


@dataclass(frozen=True)
class Intrinsics:
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @staticmethod
    def from_fov(width: int, height: int, hfov_deg: float) -> "Intrinsics":
        fx = 0.5 * width / np.tan(0.5 * np.deg2rad(hfov_deg))
        return Intrinsics(float(fx), float(fx), width / 2.0, height / 2.0, int(width), int(height))

    def k_matrix(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])


def camera_rays(t_world_cam: np.ndarray, intr: Intrinsics, offsets=((0.5, 0.5),)) -> tuple[np.ndarray, np.ndarray]:
    """Rays of one camera (OpenCV optical pose ``t_world_cam`` [4,4]) -> (rays [K,H*W,6] float32, zscale [K,H*W]).

    ``offsets`` are sub-pixel positions inside each pixel (0.5, 0.5 = centre). Directions are unit length; ``zscale``
    converts a hit distance along the ray into z-depth along the optical axis (z = t * zscale).
    """
    d_cam, zscale = _camera_frame_directions(intr, tuple(offsets))
    k, hw = zscale.shape
    rays = np.empty((k, hw, 6), np.float32)
    rays[..., :3] = t_world_cam[:3, 3]
    # C-ordered rotation: with a transposed (F-ordered) operand numpy leaves the BLAS path, ~100x slower here
    rot_t = np.ascontiguousarray(t_world_cam[:3, :3].T, dtype=np.float32)
    rays[..., 3:] = (d_cam.reshape(-1, 3) @ rot_t).reshape(k, hw, 3)
    return rays, zscale


@lru_cache(maxsize=4)
def _camera_frame_directions(intr: Intrinsics, offsets: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Unit ray directions in the optical frame [K,H*W,3] and their z components [K,H*W] (cached per camera)."""
    cols, rows = np.meshgrid(np.arange(intr.width, dtype=np.float64), np.arange(intr.height, dtype=np.float64))
    dirs, zs = [], []
    for ox, oy in offsets:
        x = (cols.reshape(-1) + ox - intr.cx) / intr.fx
        y = (rows.reshape(-1) + oy - intr.cy) / intr.fy
        d_cam = np.stack([x, y, np.ones_like(x)], -1)
        norm = np.linalg.norm(d_cam, axis=1)
        dirs.append((d_cam / norm[:, None]).astype(np.float32))
        zs.append(1.0 / norm)
    return np.stack(dirs), np.stack(zs)


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot product of [n,3] arrays (einsum avoids numpy's slow reduction over a length-3 axis)."""
    return np.einsum("ij,ij->i", a, b)


def _norm(a: np.ndarray) -> np.ndarray:
    return np.sqrt(_dot(a, a))


class Renderer:
    def __init__(self, mesh: LabeledMesh, lighting: LightingConfig | None = None) -> None:
        import open3d as o3d

        self._o3d = o3d
        self.mesh = mesh
        self.lighting = lighting or LightingConfig()
        self.scene = o3d.t.geometry.RaycastingScene()
        self.scene.add_triangles(
            o3d.core.Tensor(mesh.vertices.astype(np.float32)), o3d.core.Tensor(mesh.triangles.astype(np.uint32))
        )
        self._base_lin = np.array([m.color for m in mesh.materials])

    def cast(self, rays: np.ndarray) -> dict[str, np.ndarray]:
        out = self.scene.cast_rays(self._o3d.core.Tensor(np.ascontiguousarray(rays, np.float32)))
        return {k: v.numpy() for k, v in out.items()}

    def render(self, t_world_cam: np.ndarray, intr: Intrinsics, supersample: int = 1):
        """Returns (rgb uint8 [H,W,3], z-depth float32 [H,W] in metres (0 = miss), labels uint8 [H,W])."""
        s = max(int(supersample), 1)
        sub = [((i + 0.5) / s, (j + 0.5) / s) for j in range(s) for i in range(s)] if s > 1 else []
        rays, zscale = camera_rays(t_world_cam, intr, [(0.5, 0.5)] + sub)
        k, hw = rays.shape[:2]
        hit = self.cast(rays.reshape(-1, 6))  # one Embree call for centre + sub-pixel rays
        t = hit["t_hit"].reshape(k, hw)
        prim = hit["primitive_ids"].reshape(k, hw)
        valid0 = np.isfinite(t[0])
        depth = np.where(valid0, t[0] * zscale[0], 0.0).astype(np.float32)
        labels = np.where(valid0, self.mesh.face_class[np.where(valid0, prim[0], 0)], 0).astype(np.uint8)
        sel = slice(1, k) if s > 1 else slice(0, 1)
        sub_hit = {name: a.reshape((k, hw) + a.shape[1:])[sel].reshape((-1,) + a.shape[1:]) for name, a in hit.items()}
        lin = self.shade(rays[sel].reshape(-1, 6), sub_hit)
        lin = lin.reshape(-1, hw, 3).mean(0)
        rgb = np.clip(lin, 0.0, 1.0) ** (1.0 / self.lighting.gamma)
        rgb8 = (rgb * 255.0 + 0.5).astype(np.uint8).reshape(intr.height, intr.width, 3)
        return rgb8, depth.reshape(intr.height, intr.width), labels.reshape(intr.height, intr.width)

    def shade(self, rays: np.ndarray, hit: dict[str, np.ndarray]) -> np.ndarray:
        """Linear RGB [n,3] for rays [n,6] given their cast_rays results."""
        n = len(rays)
        t = hit["t_hit"].reshape(-1)
        valid = np.isfinite(t)
        out = np.zeros((n, 3), np.float32)
        if not valid.any():
            return out
        # float32 throughout: plenty for a 5 m room and ~2x faster than float64 in numpy
        o, d = rays[valid, :3], rays[valid, 3:]
        tri = hit["primitive_ids"].reshape(-1)[valid].astype(np.int64)
        uv = hit["primitive_uvs"].reshape(-1, 2)[valid]
        p = o + t[valid, None] * d
        # barycentric interpolation of crease-aware corner normals: p = (1-u-v) v0 + u v1 + v v2
        w = np.stack([1.0 - uv[:, 0] - uv[:, 1], uv[:, 0], uv[:, 1]], 1)
        nrm = np.einsum("nkc,nk->nc", self.mesh.corner_normals[tri], w)
        nrm /= np.maximum(_norm(nrm), 1e-12)[:, None]
        nrm *= np.where(_dot(nrm, d) > 0, -1.0, 1.0).astype(np.float32)[:, None]  # two-sided: face the viewer

        mat_idx = self.mesh.face_material[tri]
        albedo = np.zeros((len(p), 3), np.float32)
        glossy = []  # (selection, material) of specular materials: Blinn-Phong only where it is needed
        for m in np.unique(mat_idx):
            sel = np.flatnonzero(mat_idx == m)
            mat = self.mesh.materials[m]
            albedo[sel] = TEXTURES[mat.texture](p[sel], np.asarray(mat.color, np.float32), mat.texture_seed)
            if mat.specular > 0:
                glossy.append((sel, mat))
        albedo = np.clip(albedo, 0.0, 1.0) ** np.float32(self.lighting.gamma)  # sRGB-ish albedo -> linear

        light = np.full(len(p), self.lighting.ambient, np.float32)
        spec = np.zeros(len(p), np.float32)
        p_off = p + 2e-3 * nrm  # lift shadow-ray origins off the surface to avoid self-hits
        for lt in self.lighting.lights:
            vec = np.asarray(lt.position, np.float32) - p_off
            dist = _norm(vec)
            ldir = vec / dist[:, None]
            ndotl = np.maximum(_dot(nrm, ldir), 0.0)
            att = lt.intensity / (1.0 + lt.falloff * dist**2)
            vis = np.ones(len(p), np.float32)
            if self.lighting.shadows:
                # unnormalised direction = segment to the light, so t in (0, 1) covers exactly the occluders between
                srays = np.concatenate([p_off, vec], 1).astype(np.float32)
                occ = self.scene.test_occlusions(self._o3d.core.Tensor(srays), tnear=1e-4, tfar=0.999).numpy()
                vis = 1.0 - occ.astype(np.float32)
            direct = vis * att
            light += direct * ndotl
            for sel, mat in glossy:
                h = ldir[sel] - d[sel]
                h /= np.maximum(_norm(h), 1e-12)[:, None]
                ndoth = np.maximum(_dot(nrm[sel], h), 0.0)
                spec[sel] += mat.specular * direct[sel] * (ndotl[sel] > 0) * ndoth ** np.float32(mat.shininess)
        out[valid] = albedo * light[:, None] + spec[:, None]
        return out
