"""Room + furniture layout of the demo scene as one labeled triangle mesh.

World frame (REP 103): x forward/east, y left/north, z up, metres. The room is the axis-aligned box ``ROOM_BOX``
(5 m x 4 m x 2.6 m, floor at z = 0). The room is closed (it has a ceiling): every camera ray hits something, so depth
is valid everywhere and there is no "sky"; label 0 ("unknown") is only used for rays that miss, which cannot happen
for a camera inside the room but keeps the convention for consumers.

Objects are composed from open3d primitives (boxes, cylinders, spheres, cones, tori). Each triangle carries a class id
(semantic label) and a material index (colour, procedural texture, specular). The seed jitters object placement a
little so different seeds give different scenes while the camera path stays clear of the furniture.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ROOM_MIN = np.array([-2.5, -2.0, 0.0])
ROOM_MAX = np.array([2.5, 2.0, 2.6])
ROOM_BOX = np.stack([ROOM_MIN, ROOM_MAX])  # [2,3]

# id -> class name. 0 = nothing/unknown (a ray that hits nothing); ids are stable across versions of the scene.
CLASSES: dict[int, str] = {
    0: "unknown",
    1: "floor",
    2: "wall",
    3: "ceiling",
    4: "table",
    5: "chair",
    6: "sofa",
    7: "lamp",
    8: "plant",
    9: "mug",
    10: "bookshelf",
    11: "picture",
}
CLASS_IDS = {name: i for i, name in CLASSES.items()}

# Visualisation palette (uint8 RGB) for label images / meshes; not used for shading.
CLASS_COLORS: dict[int, tuple[int, int, int]] = {
    0: (0, 0, 0),
    1: (140, 100, 60),
    2: (200, 200, 200),
    3: (240, 240, 240),
    4: (230, 160, 40),
    5: (220, 30, 30),
    6: (40, 80, 220),
    7: (250, 240, 120),
    8: (40, 180, 40),
    9: (250, 0, 250),
    10: (120, 60, 20),
    11: (0, 200, 200),
}


@dataclass
class Material:
    """Surface appearance. ``color`` is sRGB-ish albedo in [0,1]; ``texture`` keys ``textures.TEXTURES``."""

    color: tuple[float, float, float]
    texture: str = "noise"
    specular: float = 0.0  # Blinn-Phong strength (0 = purely Lambertian)
    shininess: float = 32.0
    texture_seed: int = 0


@dataclass
class LabeledMesh:
    vertices: np.ndarray  # [V,3] float32, world frame
    triangles: np.ndarray  # [F,3] int32
    vertex_class: np.ndarray  # [V] uint8
    face_class: np.ndarray  # [F] uint8
    face_material: np.ndarray  # [F] int32 index into materials
    corner_normals: np.ndarray  # [F,3,3] float32, crease-smoothed shading normals per triangle corner
    materials: list[Material] = field(default_factory=list)

    @property
    def vertex_colors(self) -> np.ndarray:
        """[V,3] uint8 material base colour per vertex (for viewing mesh.ply)."""
        col = np.zeros((len(self.vertices), 3))
        base = np.array([m.color for m in self.materials])
        col[self.triangles.reshape(-1)] = np.repeat(base[self.face_material], 3, axis=0)
        return np.clip(col * 255.0 + 0.5, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------------------
# primitive helpers: thin wrappers over open3d's generators returning (vertices [n,3] float64, triangles [m,3] int64)


def _o3d_arrays(mesh) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(mesh.vertices, dtype=np.float64).copy(), np.asarray(mesh.triangles, dtype=np.int64).copy()


def box(lo, hi) -> tuple[np.ndarray, np.ndarray]:
    import open3d as o3d

    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    v, f = _o3d_arrays(o3d.geometry.TriangleMesh.create_box(*(hi - lo)))
    return v + lo, f


def cylinder(center_xy, z0: float, radius: float, height: float, resolution: int = 32):
    """Upright cylinder standing on z = z0."""
    import open3d as o3d

    v, f = _o3d_arrays(o3d.geometry.TriangleMesh.create_cylinder(radius, height, resolution=resolution, split=1))
    return v + np.array([center_xy[0], center_xy[1], z0 + height / 2.0]), f


def sphere(center, radius: float, resolution: int = 16, scale=(1.0, 1.0, 1.0)):
    import open3d as o3d

    v, f = _o3d_arrays(o3d.geometry.TriangleMesh.create_sphere(radius, resolution=resolution))
    return v * np.asarray(scale) + np.asarray(center, float), f


def cone(center_xy, z0: float, radius: float, height: float, resolution: int = 32):
    """Cone with its base disc at z = z0 and apex at z0 + height."""
    import open3d as o3d

    v, f = _o3d_arrays(o3d.geometry.TriangleMesh.create_cone(radius, height, resolution=resolution, split=1))
    return v + np.array([center_xy[0], center_xy[1], z0]), f


def torus(center, torus_radius: float, tube_radius: float, axis: str = "z"):
    """Torus around ``axis`` ('z' lies flat, 'y' stands in the x-z plane)."""
    import open3d as o3d

    v, f = _o3d_arrays(
        o3d.geometry.TriangleMesh.create_torus(torus_radius, tube_radius, radial_resolution=24, tubular_resolution=10)
    )
    if axis == "y":
        v = v[:, [0, 2, 1]]  # swap y/z: ring now in the x-z plane
        f = f[:, [0, 2, 1]]  # the swap mirrors the mesh; flip winding to keep outward normals
    return v + np.asarray(center, float), f


def quad(corners) -> tuple[np.ndarray, np.ndarray]:
    """Planar quad from 4 corners in counter-clockwise order (seen from the side its normal points to)."""
    return np.asarray(corners, float), np.array([[0, 1, 2], [0, 2, 3]])


def _yaw(v: np.ndarray, pivot, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    pivot = np.asarray(pivot, float)
    return (v - pivot) @ rot.T + pivot


class _Builder:
    """Accumulates primitives as (vertices, triangles, class id, material index) groups."""

    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, np.ndarray, int, int]] = []
        self.materials: list[Material] = []

    def material(self, m: Material) -> int:
        self.materials.append(m)
        return len(self.materials) - 1

    def add(self, vf, cls: str, mat: int) -> None:
        self.parts.append((vf[0], vf[1], CLASS_IDS[cls], mat))

    def transform_since(self, start: int, pivot, yaw: float, offset) -> None:
        """Rigidly move parts [start:] (one object) by a yaw about ``pivot`` then a translation."""
        for i in range(start, len(self.parts)):
            v, f, c, m = self.parts[i]
            self.parts[i] = (_yaw(v, pivot, yaw) + np.asarray(offset, float), f, c, m)

    def build(self, crease_deg: float = 40.0) -> LabeledMesh:
        verts, tris, vcls, fcls, fmat = [], [], [], [], []
        off = 0
        for v, f, c, m in self.parts:
            verts.append(v)
            tris.append(f + off)
            vcls.append(np.full(len(v), c, np.uint8))
            fcls.append(np.full(len(f), c, np.uint8))
            fmat.append(np.full(len(f), m, np.int32))
            off += len(v)
        vertices = np.concatenate(verts).astype(np.float32)
        triangles = np.concatenate(tris).astype(np.int32)
        return LabeledMesh(
            vertices=vertices,
            triangles=triangles,
            vertex_class=np.concatenate(vcls),
            face_class=np.concatenate(fcls),
            face_material=np.concatenate(fmat),
            corner_normals=crease_normals(vertices, triangles, crease_deg),
            materials=self.materials,
        )


def crease_normals(vertices: np.ndarray, triangles: np.ndarray, crease_deg: float = 40.0) -> np.ndarray:
    """Per-corner shading normals [F,3,3]: area-weighted average of the faces around a vertex whose normal is within
    ``crease_deg`` of the corner's own face. Spheres/cylinder sides shade smoothly while box edges and cylinder rims
    stay sharp (open3d's primitives share rim vertices between caps and sides, so plain vertex normals would smear)."""
    v = vertices.astype(np.float64)
    tri = triangles.astype(np.int64)
    cross = np.cross(v[tri[:, 1]] - v[tri[:, 0]], v[tri[:, 2]] - v[tri[:, 0]])
    area2 = np.linalg.norm(cross, axis=1)
    fn = cross / np.maximum(area2, 1e-20)[:, None]
    corner_v = tri.reshape(-1)
    corner_f = np.repeat(np.arange(len(tri)), 3)
    order = np.argsort(corner_v, kind="stable")
    sv = corner_v[order]
    starts = np.flatnonzero(np.r_[True, sv[1:] != sv[:-1]])
    counts = np.diff(np.r_[starts, len(sv)])
    group = np.repeat(np.arange(len(starts)), counts)  # group of each sorted corner
    reps = counts[group]  # partners per sorted corner (all corners of the same vertex)
    a = np.repeat(np.arange(len(sv)), reps)
    b = starts[group[a]] + (np.arange(reps.sum()) - np.repeat(np.cumsum(reps) - reps, reps))
    fa, fb = corner_f[order[a]], corner_f[order[b]]
    keep = (fn[fa] * fn[fb]).sum(1) > np.cos(np.deg2rad(crease_deg))
    acc = np.zeros((len(corner_v), 3))
    np.add.at(acc, order[a[keep]], area2[fb[keep], None] * fn[fb[keep]])
    acc /= np.maximum(np.linalg.norm(acc, axis=1, keepdims=True), 1e-20)
    return acc.reshape(-1, 3, 3).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------------


def build_scene_mesh(seed: int = 0) -> LabeledMesh:
    """The demo room with its furniture. ``seed`` jitters object placement (a few cm, a few degrees)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5CE7E]))
    tex_seed = int(rng.integers(0, 2**31))
    b = _Builder()

    def mat(color, texture="noise", specular=0.0, shininess=32.0) -> int:
        color = tuple(float(c) for c in color)
        return b.material(Material(color, texture, specular, shininess, tex_seed + len(b.materials)))

    def jitter(xy: float = 0.06, yaw_deg: float = 6.0, along: str = "xy"):
        d = rng.uniform(-xy, xy, 2) * np.array(["x" in along, "y" in along], float)
        return np.array([d[0], d[1], 0.0]), np.deg2rad(rng.uniform(-yaw_deg, yaw_deg))

    (x0, y0, z0), (x1, y1, z1) = ROOM_MIN, ROOM_MAX
    # --- room: inward-facing quads, one material per wall so that opposite walls are distinguishable
    b.add(quad([[x0, y0, z0], [x1, y0, z0], [x1, y1, z0], [x0, y1, z0]]), "floor", mat((0.62, 0.44, 0.28), "planks"))
    b.add(quad([[x0, y0, z1], [x0, y1, z1], [x1, y1, z1], [x1, y0, z1]]), "ceiling", mat((0.93, 0.92, 0.9), "plaster"))
    b.add(quad([[x0, y0, z0], [x0, y1, z0], [x0, y1, z1], [x0, y0, z1]]), "wall", mat((0.72, 0.82, 0.66), "wallpaper"))
    b.add(quad([[x1, y0, z0], [x1, y0, z1], [x1, y1, z1], [x1, y1, z0]]), "wall", mat((0.66, 0.76, 0.9), "wallpaper"))
    b.add(quad([[x0, y0, z0], [x0, y0, z1], [x1, y0, z1], [x1, y0, z0]]), "wall", mat((0.9, 0.8, 0.64), "wallpaper"))
    b.add(quad([[x0, y1, z0], [x1, y1, z0], [x1, y1, z1], [x0, y1, z1]]), "wall", mat((0.9, 0.72, 0.74), "wallpaper"))

    # --- pictures on the -y and -x walls (2 cm thick canvases)
    canvas = mat((0.5, 0.5, 0.5), "painting")
    b.add(box([-1.2, y0, 1.1], [-0.1, y0 + 0.02, 1.8]), "picture", canvas)
    b.add(box([x0, -1.3, 1.0], [x0 + 0.02, -0.5, 1.6]), "picture", mat((0.4, 0.45, 0.6), "painting"))

    # --- table (varnished wood: weak specular) with a glossy mug on it
    start = len(b.parts)
    wood = mat((0.55, 0.34, 0.17), "wood", specular=0.15, shininess=24.0)
    b.add(box([-0.55, -0.33, 0.70], [0.55, 0.33, 0.75]), "table", wood)
    for sx in (-1, 1):
        for sy in (-1, 1):
            b.add(cylinder((sx * 0.48, sy * 0.26), 0.0, 0.03, 0.70, 12), "table", wood)
    mug_start = len(b.parts)
    mug = mat((0.95, 0.8, 0.15), "bands", specular=0.7, shininess=64.0)
    mx, my = 0.2, 0.06
    b.add(cylinder((mx, my), 0.75, 0.06, 0.13, 32), "mug", mug)
    b.add(torus((mx + 0.075, my, 0.815), 0.04, 0.012, axis="y"), "mug", mug)
    dmug, ymug = jitter(0.05, 180.0)
    b.transform_since(mug_start, (mx, my, 0.0), ymug, dmug)
    off, yaw = jitter()
    b.transform_since(start, (0.0, 0.0, 0.0), yaw, off)

    # --- chair facing the table from -x (red checker seat/back, dark legs)
    start = len(b.parts)
    seat = mat((0.8, 0.16, 0.12), "checker")
    legs = mat((0.25, 0.16, 0.1), "wood")
    cx, cy = -0.9, 0.0
    b.add(box([cx - 0.23, cy - 0.23, 0.43], [cx + 0.23, cy + 0.23, 0.48]), "chair", seat)
    for sx in (-1, 1):
        for sy in (-1, 1):
            lx, ly = cx + sx * 0.19, cy + sy * 0.19
            b.add(box([lx - 0.02, ly - 0.02, 0.0], [lx + 0.02, ly + 0.02, 0.43]), "chair", legs)
    b.add(box([cx - 0.23, cy - 0.23, 0.48], [cx - 0.19, cy + 0.23, 0.98]), "chair", seat)
    off, yaw = jitter(0.05, 10.0)
    b.transform_since(start, (cx, cy, 0.0), yaw, off)

    # --- sofa against the +y wall (blue fabric, orange cushions)
    start = len(b.parts)
    fabric = mat((0.22, 0.32, 0.68), "fabric")
    b.add(box([-1.0, 1.2, 0.0], [1.0, 1.95, 0.42]), "sofa", fabric)
    b.add(box([-1.0, 1.75, 0.42], [1.0, 1.95, 0.88]), "sofa", fabric)
    for sx in (-1, 1):
        b.add(box([sx * 1.0 - (sx > 0) * 0.18, 1.2, 0.42], [sx * 1.0 + (sx < 0) * 0.18, 1.75, 0.62]), "sofa", fabric)
    cushion = mat((0.92, 0.52, 0.16), "fabric")
    for cxx in (-0.45, 0.45):
        b.add(sphere((cxx, 1.62, 0.6), 0.17, 16, scale=(1.0, 0.45, 1.0)), "sofa", cushion)
    off, _ = jitter(0.15, 0.0, along="x")
    b.transform_since(start, (0.0, 0.0, 0.0), 0.0, off)

    # --- bookshelf against the +x wall with rows of books
    start = len(b.parts)
    shelf_wood = mat((0.82, 0.66, 0.45), "wood")
    sx0, sx1, sy0, sy1, h = 2.18, 2.48, -0.6, 0.6, 1.9
    b.add(box([sx0, sy0, 0.0], [sx1, sy0 + 0.03, h]), "bookshelf", shelf_wood)
    b.add(box([sx0, sy1 - 0.03, 0.0], [sx1, sy1, h]), "bookshelf", shelf_wood)
    b.add(box([sx1 - 0.02, sy0 + 0.03, 0.0], [sx1, sy1 - 0.03, h]), "bookshelf", shelf_wood)
    levels = [0.0, 0.46, 0.92, 1.38, h - 0.03]
    for z in levels:
        b.add(box([sx0, sy0 + 0.03, z], [sx1 - 0.02, sy1 - 0.03, z + 0.03]), "bookshelf", shelf_wood)
    palette = np.array(
        [[0.7, 0.1, 0.1], [0.1, 0.3, 0.6], [0.1, 0.5, 0.2], [0.85, 0.7, 0.1], [0.5, 0.2, 0.5], [0.9, 0.9, 0.85],
         [0.2, 0.2, 0.2], [0.9, 0.45, 0.1]]
    )
    book_mats = [mat(c, "noise") for c in palette]
    for z in levels[:-1]:
        y = sy0 + 0.05
        while True:
            w = rng.uniform(0.03, 0.065)
            if y + w > sy1 - 0.05:
                break
            bh = rng.uniform(0.2, 0.36)
            depth = rng.uniform(0.17, 0.26)
            if rng.random() < 0.85:  # leave occasional gaps: more depth structure
                b.add(box([sx1 - 0.02 - depth, y, z + 0.03], [sx1 - 0.02, y + w, z + 0.03 + bh]), "bookshelf",
                      book_mats[int(rng.integers(len(book_mats)))])
            y += w + 0.004
    off, _ = jitter(0.12, 0.0, along="y")
    b.transform_since(start, (0.0, 0.0, 0.0), 0.0, off)

    # --- floor lamp in the +y/-x corner: metal pole (strong specular), cone shade
    start = len(b.parts)
    metal = mat((0.72, 0.72, 0.75), "solid", specular=0.9, shininess=80.0)
    shade = mat((0.96, 0.9, 0.72), "bands", specular=0.2, shininess=16.0)
    lx, ly = -2.0, 1.5
    b.add(cylinder((lx, ly), 0.0, 0.17, 0.03, 32), "lamp", metal)
    b.add(cylinder((lx, ly), 0.03, 0.02, 1.42, 12), "lamp", metal)
    b.add(cone((lx, ly), 1.3, 0.24, 0.38, 32), "lamp", shade)
    off, yaw = jitter(0.08, 0.0)
    b.transform_since(start, (lx, ly, 0.0), yaw, off)

    # --- potted plant in the -y/-x corner: banded terracotta pot, stem, blobs of foliage
    start = len(b.parts)
    pot = mat((0.76, 0.4, 0.24), "bands")
    leaf = mat((0.3, 0.7, 0.2), "leaf")
    px, py = -2.0, -1.45
    b.add(cylinder((px, py), 0.0, 0.17, 0.32, 32), "plant", pot)
    b.add(cylinder((px, py), 0.32, 0.018, 0.35, 8), "plant", mat((0.35, 0.28, 0.12), "solid"))
    blobs = [(0.0, 0.0, 0.85, 0.2), (0.14, 0.06, 0.72, 0.14), (-0.12, 0.1, 0.76, 0.15), (0.02, -0.14, 0.7, 0.13),
             (-0.05, 0.02, 1.03, 0.12)]
    for dx, dy, z, r in blobs:
        b.add(sphere((px + dx, py + dy, z), r, 14), "plant", leaf)
    off, yaw = jitter(0.08, 30.0)
    b.transform_since(start, (px, py, 0.0), yaw, off)

    return b.build()


# ----------------------------------------------------------------------------------------------------------------------
# The corridor layout: a 30 m corridor with three side rooms, for maps larger than one room (``--layout corridor``).

CORRIDOR_MIN = np.array([-15.0, -1.2, 0.0])
CORRIDOR_MAX = np.array([15.0, 1.2, 2.6])
SIDE_ROOM_CENTRES_X = (-10.0, 0.0, 10.0)  # rooms of 5 m x 4 m behind the +y wall, a 1.2 m doorway each
SIDE_ROOM_HALF_X, SIDE_ROOM_Y, WALL_T, DOOR_HALF, DOOR_TOP = 2.5, (1.3, 5.3), 0.1, 0.6, 2.1
CORRIDOR_BOX = np.array([[-15.0, -1.2, 0.0], [15.0, 5.3, 2.6]])  # everything visible (corridor and side rooms)


def build_corridor_mesh(seed: int = 0) -> LabeledMesh:
    """A 30 m x 2.4 m corridor (x along its length) with three 5 m x 4 m rooms opening onto its +y side through
    doorways, furnished with textured objects along the walls; the camera path runs down the corridor's middle
    (:func:`nerf_mapping.scene.trajectory.corridor_camera_poses`), so everything stays at least 0.5 m from it.
    The wall between the corridor and the rooms is 10 cm thick (both of its faces are seen). ``seed`` jitters the
    furniture along the walls and the colours."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xC0DD]))
    tex_seed = int(rng.integers(0, 2**31))
    b = _Builder()

    def mat(color, texture="noise", specular=0.0, shininess=32.0) -> int:
        color = tuple(float(np.clip(c, 0.0, 1.0)) for c in color)
        return b.material(Material(color, texture, specular, shininess, tex_seed + len(b.materials)))

    def tint(base) -> np.ndarray:
        return np.asarray(base, float) * rng.uniform(0.85, 1.1, 3)

    (x0, y0, z0), (x1, y1, z1) = CORRIDOR_MIN, CORRIDOR_MAX
    # --- corridor shell: floor and ceiling; the -y wall and the end walls in 5 m panels of different wallpaper, so
    # that places along the corridor look different (a uniform corridor would alias for any visual method)
    b.add(quad([[x0, y0, z0], [x1, y0, z0], [x1, y1, z0], [x0, y1, z0]]), "floor", mat((0.55, 0.42, 0.3), "planks"))
    b.add(quad([[x0, y0, z1], [x0, y1, z1], [x1, y1, z1], [x1, y0, z1]]), "ceiling", mat((0.93, 0.92, 0.9), "plaster"))
    hues = [(0.72, 0.82, 0.66), (0.66, 0.76, 0.9), (0.9, 0.8, 0.64), (0.9, 0.72, 0.74), (0.78, 0.7, 0.9),
            (0.7, 0.88, 0.86)]
    for i, xa in enumerate(np.arange(x0, x1, 5.0)):
        xb = min(xa + 5.0, x1)
        b.add(quad([[xa, y0, z0], [xa, y0, z1], [xb, y0, z1], [xb, y0, z0]]), "wall", mat(tint(hues[i]), "wallpaper"))
    b.add(quad([[x0, y0, z0], [x0, y1, z0], [x0, y1, z1], [x0, y0, z1]]), "wall", mat((0.8, 0.6, 0.5), "wallpaper"))
    b.add(quad([[x1, y0, z0], [x1, y0, z1], [x1, y1, z1], [x1, y1, z0]]), "wall", mat((0.5, 0.6, 0.8), "wallpaper"))

    # --- the +y wall: 10 cm thick, with a doorway into each side room
    wall = mat((0.85, 0.84, 0.78), "plaster")
    cuts = sorted(SIDE_ROOM_CENTRES_X)
    xa = x0
    for cx in cuts:
        b.add(box([xa, y1, z0], [cx - DOOR_HALF, y1 + WALL_T, z1]), "wall", wall)
        b.add(box([cx - DOOR_HALF, y1, DOOR_TOP], [cx + DOOR_HALF, y1 + WALL_T, z1]), "wall", wall)  # lintel
        b.add(quad([[cx - DOOR_HALF, y1, z0], [cx + DOOR_HALF, y1, z0], [cx + DOOR_HALF, y1 + WALL_T, z0],
                    [cx - DOOR_HALF, y1 + WALL_T, z0]]), "floor", wall)  # threshold under the doorway
        xa = cx + DOOR_HALF
    b.add(box([xa, y1, z0], [x1, y1 + WALL_T, z1]), "wall", wall)

    # --- side rooms: floor, ceiling, three walls of their own colour, a table, a bookshelf-like cabinet, a plant
    ry0, ry1 = SIDE_ROOM_Y
    for k, cx in enumerate(SIDE_ROOM_CENTRES_X):
        ra, rb = cx - SIDE_ROOM_HALF_X, cx + SIDE_ROOM_HALF_X
        b.add(quad([[ra, ry0, z0], [rb, ry0, z0], [rb, ry1, z0], [ra, ry1, z0]]), "floor",
              mat(tint((0.6, 0.5, 0.38)), "planks"))
        b.add(quad([[ra, ry0, z1], [ra, ry1, z1], [rb, ry1, z1], [rb, ry0, z1]]), "ceiling", mat((0.9, 0.9, 0.88),
                                                                                               "plaster"))
        wcol = tint(hues[(2 * k + 1) % len(hues)])
        b.add(quad([[ra, ry1, z0], [rb, ry1, z0], [rb, ry1, z1], [ra, ry1, z1]]), "wall", mat(wcol, "wallpaper"))
        b.add(quad([[ra, ry0, z0], [ra, ry1, z0], [ra, ry1, z1], [ra, ry0, z1]]), "wall", mat(wcol * 0.9, "wallpaper"))
        b.add(quad([[rb, ry0, z0], [rb, ry0, z1], [rb, ry1, z1], [rb, ry1, z0]]), "wall", mat(wcol * 0.95, "wallpaper"))
        tx, ty = cx + rng.uniform(-0.8, 0.8), 3.3 + rng.uniform(-0.3, 0.3)
        wood = mat(tint((0.55, 0.34, 0.17)), "wood", specular=0.15, shininess=24.0)
        b.add(box([tx - 0.6, ty - 0.4, 0.70], [tx + 0.6, ty + 0.4, 0.75]), "table", wood)
        for sx in (-1, 1):
            for sy in (-1, 1):
                b.add(cylinder((tx + sx * 0.52, ty + sy * 0.32), 0.0, 0.03, 0.70, 12), "table", wood)
        b.add(box([ra + 0.1, ry1 - 0.45, 0.0], [ra + 1.4, ry1 - 0.05, 1.8]), "bookshelf",
              mat(tint((0.5, 0.3, 0.2)), "checker"))
        b.add(box([rb - 1.2, ry1 - 0.3, 1.0], [rb - 0.2, ry1 - 0.28, 1.7]), "picture", mat((0.5, 0.5, 0.5), "painting"))
        _plant(b, mat, (rb - 0.5, ry0 + 0.6))

    # --- along the -y wall: pictures, benches, cabinets and plants, one group per 5 m panel (jittered)
    for i, xa in enumerate(np.arange(x0, x1, 5.0)):
        xc = xa + 2.5 + rng.uniform(-0.6, 0.6)
        b.add(box([xc - 0.7, y0, 1.1], [xc + 0.7, y0 + 0.02, 1.9]), "picture",
              mat(tint((0.5, 0.45, 0.5)), "painting"))
        kind = i % 3
        ox = xa + 0.8 + rng.uniform(0.0, 0.4)
        if kind == 0:  # bench
            fabric = mat(tint((0.22, 0.32, 0.68)), "fabric")
            b.add(box([ox, y0 + 0.05, 0.0], [ox + 1.6, y0 + 0.5, 0.45]), "sofa", fabric)
        elif kind == 1:  # cabinet
            b.add(box([ox, y0, 0.0], [ox + 1.0, y0 + 0.45, 1.1]), "bookshelf", mat(tint((0.82, 0.66, 0.45)), "wood"))
        else:  # floor lamp
            metal = mat((0.72, 0.72, 0.75), "solid", specular=0.9, shininess=80.0)
            lx, ly = ox + 0.3, y0 + 0.3
            b.add(cylinder((lx, ly), 0.0, 0.17, 0.03, 32), "lamp", metal)
            b.add(cylinder((lx, ly), 0.03, 0.02, 1.42, 12), "lamp", metal)
            b.add(cone((lx, ly), 1.3, 0.24, 0.38, 32), "lamp", mat((0.96, 0.9, 0.72), "bands", specular=0.2))
        _plant(b, mat, (xa + 4.3 + rng.uniform(-0.2, 0.2), y0 + 0.35))
    # pictures between the doorways on the +y wall (corridor side)
    for xc in (-5.0, 5.0):
        b.add(box([xc - 0.8, y1 - 0.02, 1.1], [xc + 0.8, y1, 1.9]), "picture", mat(tint((0.45, 0.5, 0.55)), "painting"))
    return b.build()


def _plant(b: _Builder, mat, xy) -> None:
    """A potted plant: a banded pot, a stem and blobs of foliage (at most 0.25 m from ``xy``)."""
    px, py = xy
    b.add(cylinder((px, py), 0.0, 0.17, 0.32, 32), "plant", mat((0.76, 0.4, 0.24), "bands"))
    b.add(cylinder((px, py), 0.32, 0.018, 0.35, 8), "plant", mat((0.35, 0.28, 0.12), "solid"))
    leaf = mat((0.3, 0.7, 0.2), "leaf")
    for dx, dy, z, r in ((0.0, 0.0, 0.85, 0.2), (0.1, 0.05, 0.72, 0.14), (-0.1, 0.08, 0.76, 0.15)):
        b.add(sphere((px + dx, py + dy, z), r, 14), "plant", leaf)
