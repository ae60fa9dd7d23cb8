"""Procedural solid textures for the demo scene.

Every texture is a pure function of the 3D hit point (world frame, metres), so a surface point has the same albedo
from every view: photometric NeRF training gets multi-view-consistent detail to lock onto. Inputs are float arrays
``p [n,3]`` and the material's base colour (sRGB-ish, 0..1); outputs are albedo ``[n,3]`` in the same space.
"""

from __future__ import annotations

import numpy as np

# Large odd constants for lattice hashing (any well-mixed uint32 hash works; these spread neighbouring cells apart).
_HX, _HY, _HZ = np.uint32(0x8DA6B343), np.uint32(0xD8163841), np.uint32(0xCB1AB31F)


def hash3(ix: np.ndarray, iy: np.ndarray, iz: np.ndarray, seed: int) -> np.ndarray:
    """Deterministic uint32 lattice hash -> float in [0, 1). Integer hashing (no sin trick) stays well mixed for any
    cell index."""
    with np.errstate(over="ignore"):
        h = (ix.astype(np.uint32) * _HX) ^ (iy.astype(np.uint32) * _HY) ^ (iz.astype(np.uint32) * _HZ)
        h ^= np.uint32(seed * 0x9E3779B1 & 0xFFFFFFFF)
        # xorshift-multiply finaliser (murmur3 style) so that low bits are well mixed
        h ^= h >> np.uint32(16)
        h *= np.uint32(0x7FEB352D)
        h ^= h >> np.uint32(15)
        h *= np.uint32(0x846CA68B)
        h ^= h >> np.uint32(16)
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / 16777216.0)  # 24 bits: exact in float32


def value_noise(p: np.ndarray, freq: float, seed: int) -> np.ndarray:
    """Trilinearly interpolated lattice value noise in [0, 1] at cell size 1/freq (smoothstep fade, C1 continuous)."""
    q = p * freq + 1000.0  # offset keeps lattice indices positive (uint32 cast) for any room coordinate
    i = np.floor(q)
    f = (q - i).astype(np.float32)
    f = f * f * (3.0 - 2.0 * f)
    i = i.astype(np.int64)
    out = np.zeros(len(p), np.float32)
    for dx in (0, 1):
        wx = f[:, 0] if dx else 1.0 - f[:, 0]
        for dy in (0, 1):
            wy = f[:, 1] if dy else 1.0 - f[:, 1]
            for dz in (0, 1):
                wz = f[:, 2] if dz else 1.0 - f[:, 2]
                out += wx * wy * wz * hash3(i[:, 0] + dx, i[:, 1] + dy, i[:, 2] + dz, seed)
    return out


def fbm(p: np.ndarray, freq: float, seed: int, octaves: int = 3) -> np.ndarray:
    """Fractal sum of value noise, normalised to [0, 1]."""
    total, amp, norm = np.zeros(len(p), np.float32), 1.0, 0.0
    for o in range(octaves):
        total += amp * value_noise(p, freq * (2.0**o), seed + 17 * o)
        norm += amp
        amp *= 0.5
    return total / norm


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    return a * (1.0 - t[:, None]) + b * t[:, None]


def tex_planks(p: np.ndarray, base: np.ndarray, seed: int, width: float = 0.18, length: float = 1.1) -> np.ndarray:
    """Wooden floor: planks along x, staggered rows along y, per-plank tint, grain lines and dark seams."""
    row = np.floor(p[:, 1] / width)
    shift = hash3(row.astype(np.int64), np.zeros_like(row, np.int64), np.zeros_like(row, np.int64), seed) * length
    col = np.floor((p[:, 0] + shift) / length)
    tint = 0.75 + 0.45 * hash3(row.astype(np.int64), col.astype(np.int64), np.ones_like(row, np.int64), seed)
    warp = fbm(p * np.array([0.5, 4.0, 1.0]), 2.0, seed + 3, 2)
    grain = 0.88 + 0.12 * np.sin(2 * np.pi * (p[:, 1] * 14.0 + 2.0 * warp))
    fy = p[:, 1] / width - row
    fx = (p[:, 0] + shift) / length - col
    seam = (np.minimum(fy, 1 - fy) < 0.04) | (np.minimum(fx, 1 - fx) * length / width < 0.04)
    shade = tint * grain * np.where(seam, 0.45, 1.0)
    return base[None, :] * shade[:, None]


def tex_wallpaper(p: np.ndarray, base: np.ndarray, seed: int, period: float = 0.3) -> np.ndarray:
    """Painted wall: two-tone vertical stripes (period along the wall) + low-frequency blotches.

    Stripes alone are ambiguous along their direction (aperture problem), so the blotch noise makes every patch unique.
    """
    along = p[:, 0] + p[:, 1]  # walls are axis-aligned; x+y runs along both wall orientations
    stripes = (np.floor(along / period) % 2).astype(np.float64)
    blotch = fbm(p, 2.5, seed, 3)
    fine = value_noise(p, 25.0, seed + 5)
    shade = (0.78 + 0.12 * stripes) * (0.7 + 0.5 * blotch) * (0.93 + 0.07 * fine)
    return base[None, :] * shade[:, None]


def tex_plaster(p: np.ndarray, base: np.ndarray, seed: int) -> np.ndarray:
    shade = 0.8 + 0.3 * fbm(p, 3.0, seed, 3)
    return base[None, :] * shade[:, None]


def tex_wood(p: np.ndarray, base: np.ndarray, seed: int, axis: int = 0) -> np.ndarray:
    """Wood grain: growth rings around an axis, warped by noise so that rings are irregular."""
    q = np.delete(p, axis, axis=1)
    r = np.sqrt(((q - np.array([0.37, -0.21])) ** 2).sum(1))
    rings = 0.5 + 0.5 * np.sin(2 * np.pi * (r * 18.0 + 2.0 * fbm(p, 3.0, seed, 2)))
    shade = 0.7 + 0.3 * rings * (0.8 + 0.4 * value_noise(p, 12.0, seed + 9))
    return base[None, :] * shade[:, None]


def tex_checker(p: np.ndarray, base: np.ndarray, seed: int, cell: float = 0.06) -> np.ndarray:
    """3D checker (cell in metres) plus mild noise: a high-contrast fabric pattern."""
    c = np.floor(p / cell).astype(np.int64).sum(1) % 2
    shade = np.where(c == 1, 1.0, 0.55) * (0.85 + 0.25 * value_noise(p, 8.0, seed))
    return base[None, :] * shade[:, None]


def tex_fabric(p: np.ndarray, base: np.ndarray, seed: int) -> np.ndarray:
    """Upholstery: blotchy noise + a coarse woven stripe pattern in two directions."""
    weave = 0.5 + 0.25 * (np.sin(2 * np.pi * p[:, 0] / 0.05) + np.sin(2 * np.pi * (p[:, 1] + p[:, 2]) / 0.05))
    shade = (0.6 + 0.6 * fbm(p, 4.0, seed, 3)) * (0.85 + 0.15 * weave)
    return base[None, :] * shade[:, None]


def tex_bands(p: np.ndarray, base: np.ndarray, seed: int, period: float = 0.05) -> np.ndarray:
    """Horizontal bands (along world z) + noise: pots, lamp shades, mugs."""
    bands = (np.floor(p[:, 2] / period) % 2).astype(np.float64)
    shade = (0.7 + 0.3 * bands) * (0.85 + 0.3 * value_noise(p, 15.0, seed))
    return base[None, :] * shade[:, None]


def tex_leaf(p: np.ndarray, base: np.ndarray, seed: int) -> np.ndarray:
    """Foliage: strong green variation so the blob-like plant has visible structure."""
    n = fbm(p, 10.0, seed, 3)
    light = np.array([0.55, 0.85, 0.25])
    dark = np.array([0.1, 0.35, 0.08])
    return _mix(dark[None, :] * np.ones((len(p), 1)), light[None, :] * np.ones((len(p), 1)), n) * (base / base.max())


def tex_noise(p: np.ndarray, base: np.ndarray, seed: int) -> np.ndarray:
    shade = 0.75 + 0.35 * fbm(p, 6.0, seed, 2)
    return base[None, :] * shade[:, None]


def tex_solid(p: np.ndarray, base: np.ndarray, seed: int) -> np.ndarray:
    return np.broadcast_to(base[None, :], (len(p), 3)).copy()


TEXTURES = {
    "planks": tex_planks,
    "wallpaper": tex_wallpaper,
    "plaster": tex_plaster,
    "wood": tex_wood,
    "checker": tex_checker,
    "fabric": tex_fabric,
    "bands": tex_bands,
    "leaf": tex_leaf,
    "noise": tex_noise,
    "solid": tex_solid,
}


def tex_painting(p: np.ndarray, base: np.ndarray, seed: int) -> np.ndarray:
    """Colourful abstract canvas: three independent noise channels give strong, unique features on a wall."""
    rgb = np.stack([fbm(p, 6.0, seed + 31 * c, 3) for c in range(3)], axis=1)
    rgb = np.clip((rgb - 0.5) * 2.2 + 0.5, 0.05, 1.0)
    return 0.3 * base[None, :] + 0.7 * rgb


TEXTURES["painting"] = tex_painting
