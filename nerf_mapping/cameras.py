"""Camera models, distortion, pixel <-> direction mapping and ray generation.

Conventions (docs/CONTRACTS.md):
- ``c2w`` is camera-to-world ``[N, 3, 4]`` float32 in **OpenGL camera axes** (+X right, +Y up, +Z back; the camera
  looks along -Z), exactly like nerfstudio's ``transform_matrix``.
- Pixel coordinates are continuous with the image corner at (0, 0); the centre of pixel (col i, row j) is
  (i + 0.5, j + 0.5). Because of this "corner" convention, downscaling the image by ``s`` scales fx, fy, cx, cy by
  exactly ``s`` (no half-pixel correction).
- Distortion coefficients are stored nerfstudio-style as ``[k1, k2, k3, k4, p1, p2]``.

Camera models (index into :data:`CAMERA_MODELS`):
- ``PINHOLE``: plain perspective, distortion ignored.
- ``OPENCV``: perspective + Brown-Conrady radial (k1, k2, k3 and, like nerfstudio, k4 * r^8) and tangential (p1, p2).
- ``OPENCV_FISHEYE``: equidistant fisheye, theta_d = theta * (1 + k1 theta^2 + k2 theta^4 + k3 theta^6 + k4 theta^8).
  Supports fields of view beyond 180 degrees. p1, p2 are ignored (OpenCV's fisheye model has none).
- ``EQUIRECTANGULAR``: full sphere; px in [0, W) maps to longitude [-pi, pi) (increasing to the right),
  py in [0, H) maps to latitude [+pi/2, -pi/2] (top row looks up). Intrinsics fx..cy are ignored, only W, H are used.

The lens-distortion math works in OpenCV's normalised image plane (x right, y down, z forward); directions are
converted to OpenGL axes only at the boundary (flip y and z).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor

CAMERA_MODELS = ("PINHOLE", "OPENCV", "OPENCV_FISHEYE", "EQUIRECTANGULAR")
PINHOLE, OPENCV, OPENCV_FISHEYE, EQUIRECTANGULAR = range(4)

# Newton iterations for undistortion. Quadratic convergence: 10 is plenty for realistic lenses; more only costs time.
_NEWTON_ITERS = 10


def camera_model_index(model: str | int) -> int:
    """Map a model name (case-insensitive) or index to the index into CAMERA_MODELS; ValueError if unknown."""
    if isinstance(model, int):
        if not 0 <= model < len(CAMERA_MODELS):
            raise ValueError(f"camera model index {model} out of range 0..{len(CAMERA_MODELS) - 1}")
        return model
    name = str(model).upper()
    if name not in CAMERA_MODELS:
        raise ValueError(f"unknown camera model {model!r}; expected one of {', '.join(CAMERA_MODELS)}")
    return CAMERA_MODELS.index(name)


@dataclass
class Cameras:
    """A batch of N cameras (all tensors share the leading dimension N).

    c2w:        [N, 3, 4] float32 camera-to-world, OpenGL axes.
    fx, fy:     [N] float32 focal lengths in pixels.
    cx, cy:     [N] float32 principal point in pixels (corner convention, pixel centres at +0.5).
    width:      [N] int64 image width in pixels.
    height:     [N] int64 image height in pixels.
    distortion: [N, 6] float32 (k1, k2, k3, k4, p1, p2); zeros = none.
    model:      [N] int64 index into CAMERA_MODELS.
    """

    c2w: Tensor
    fx: Tensor
    fy: Tensor
    cx: Tensor
    cy: Tensor
    width: Tensor
    height: Tensor
    distortion: Tensor
    model: Tensor

    # ------------------------------------------------------------------ construction
    @staticmethod
    def create(
        c2w,
        fx,
        fy,
        cx,
        cy,
        width,
        height,
        distortion=None,
        model: str | int | Tensor = "PINHOLE",
    ) -> "Cameras":
        """Build a batch from array-likes, broadcasting scalars to N = len(c2w).

        c2w: [N,3,4] or [N,4,4] (or a single [3,4]/[4,4]); scalars / [N] for intrinsics; distortion [6] or [N,6];
        model a name, an index, a list of N names or an [N] tensor of indices.
        """
        c2w = torch.as_tensor(c2w, dtype=torch.float32)
        if c2w.dim() == 2:
            c2w = c2w[None]
        c2w = c2w[:, :3, :4].contiguous()
        n = c2w.shape[0]

        def vec(x, dtype):
            t = torch.as_tensor(x, dtype=dtype)
            return t.expand(n).clone() if t.dim() == 0 else t.reshape(n).clone()

        if distortion is None:
            dist = torch.zeros(n, 6, dtype=torch.float32)
        else:
            dist = torch.as_tensor(distortion, dtype=torch.float32)
            dist = dist.expand(n, 6).clone() if dist.dim() == 1 else dist.reshape(n, 6).clone()
        if isinstance(model, (str, int)):
            mod = torch.full((n,), camera_model_index(model), dtype=torch.int64)
        elif isinstance(model, (list, tuple)) and model and isinstance(model[0], str):
            mod = torch.tensor([camera_model_index(m) for m in model], dtype=torch.int64)
        else:
            mod = vec(model, torch.int64)
        return Cameras(
            c2w=c2w,
            fx=vec(fx, torch.float32),
            fy=vec(fy, torch.float32),
            cx=vec(cx, torch.float32),
            cy=vec(cy, torch.float32),
            width=vec(width, torch.int64),
            height=vec(height, torch.int64),
            distortion=dist,
            model=mod,
        )

    # ------------------------------------------------------------------ container protocol
    def __len__(self) -> int:
        return int(self.c2w.shape[0])

    def __getitem__(self, idx) -> "Cameras":
        """int / slice / LongTensor / bool mask -> Cameras (an int keeps the batch dim: a batch of one)."""
        if isinstance(idx, int):
            n = len(self)
            if not -n <= idx < n:
                raise IndexError(f"camera index {idx} out of range for {n} cameras")
            idx = slice(idx % n, idx % n + 1)
        return Cameras(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    def to(self, device) -> "Cameras":
        return Cameras(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    @staticmethod
    def cat(cams: list["Cameras"]) -> "Cameras":
        if not cams:
            raise ValueError("Cameras.cat needs at least one Cameras")
        return Cameras(**{f.name: torch.cat([getattr(c, f.name) for c in cams], 0) for f in fields(Cameras)})

    def scaled(self, factor: float) -> "Cameras":
        """Intrinsics and image sizes scaled by ``factor`` (downscale by K -> factor = 1/K).

        Sizes are rounded; intrinsics scale exactly (corner pixel convention). For non-integer size ratios the
        loaders rescale per axis from the actual image size instead.
        """
        f = float(factor)
        return Cameras(
            c2w=self.c2w.clone(),
            fx=self.fx * f,
            fy=self.fy * f,
            cx=self.cx * f,
            cy=self.cy * f,
            width=torch.round(self.width.double() * f).to(torch.int64).clamp_min(1),
            height=torch.round(self.height.double() * f).to(torch.int64).clamp_min(1),
            distortion=self.distortion.clone(),  # distortion acts on normalised coordinates: scale-invariant
            model=self.model.clone(),
        )

    def intrinsics_matrices(self) -> Tensor:
        """[N, 3, 3] float32 pinhole K (OpenCV convention, pixel corners at integers)."""
        k = torch.zeros(len(self), 3, 3, dtype=torch.float32, device=self.device)
        k[:, 0, 0] = self.fx
        k[:, 1, 1] = self.fy
        k[:, 0, 2] = self.cx
        k[:, 1, 2] = self.cy
        k[:, 2, 2] = 1.0
        return k

    def model_names(self) -> list[str]:
        return [CAMERA_MODELS[int(m)] for m in self.model.tolist()]


# ====================================================================== pixels
def pixel_centers(width: int, height: int, device=None) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates of a W x H image, flattened row-major.

    Returns px [H*W], py [H*W] float32 with px = col + 0.5, py = row + 0.5.
    """
    xs = torch.arange(int(width), dtype=torch.float32, device=device) + 0.5
    ys = torch.arange(int(height), dtype=torch.float32, device=device) + 0.5
    py, px = torch.meshgrid(ys, xs, indexing="ij")
    return px.reshape(-1), py.reshape(-1)


# ====================================================================== distortion kernels (OpenCV normalised plane)
def opencv_distort(x: Tensor, y: Tensor, dist: Tensor) -> tuple[Tensor, Tensor]:
    """Apply Brown-Conrady distortion to normalised coordinates.

    x, y: [R] undistorted normalised coords (OpenCV axes); dist: [R, 6] (k1,k2,k3,k4,p1,p2).
    Returns xd, yd [R].
    """
    k1, k2, k3, k4, p1, p2 = dist.unbind(-1)
    r2 = x * x + y * y
    radial = 1.0 + r2 * (k1 + r2 * (k2 + r2 * (k3 + r2 * k4)))
    xd = x * radial + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x)
    yd = y * radial + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y
    return xd, yd


def opencv_undistort(xd: Tensor, yd: Tensor, dist: Tensor, iters: int = _NEWTON_ITERS) -> tuple[Tensor, Tensor]:
    """Invert :func:`opencv_distort` with a vectorised 2-D Newton iteration (analytic 2x2 Jacobian).

    xd, yd: [R] distorted normalised coords; dist: [R, 6]. Returns x, y [R].
    Starts from the distorted point, which is within the basin of attraction for any lens whose distortion is
    monotonic over the image (every calibrated lens in practice).
    """
    k1, k2, k3, k4, p1, p2 = dist.unbind(-1)
    x, y = xd.clone(), yd.clone()
    for _ in range(iters):
        r2 = x * x + y * y
        radial = 1.0 + r2 * (k1 + r2 * (k2 + r2 * (k3 + r2 * k4)))
        # d(radial)/d(r2)
        dradial = k1 + r2 * (2.0 * k2 + r2 * (3.0 * k3 + r2 * 4.0 * k4))
        fx_ = x * radial + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x) - xd
        fy_ = y * radial + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y - yd
        # Jacobian of the distortion map w.r.t. (x, y)
        j_xx = radial + 2.0 * x * x * dradial + 2.0 * p1 * y + 6.0 * p2 * x
        j_xy = 2.0 * x * y * dradial + 2.0 * p1 * x + 2.0 * p2 * y
        j_yx = 2.0 * x * y * dradial + 2.0 * p1 * x + 2.0 * p2 * y
        j_yy = radial + 2.0 * y * y * dradial + 6.0 * p1 * y + 2.0 * p2 * x
        det = j_xx * j_yy - j_xy * j_yx
        # Guard against a singular Jacobian (far outside the valid region): take no step there.
        ok = det.abs() > 1e-12
        det = torch.where(ok, det, torch.ones_like(det))
        dx = (fx_ * j_yy - fy_ * j_xy) / det
        dy = (fy_ * j_xx - fx_ * j_yx) / det
        x = torch.where(ok, x - dx, x)
        y = torch.where(ok, y - dy, y)
    return x, y


def fisheye_theta_d(theta: Tensor, dist: Tensor) -> Tensor:
    """Equidistant fisheye: distorted radius theta_d(theta). theta [R], dist [R,6] -> [R]."""
    k1, k2, k3, k4 = dist[:, 0], dist[:, 1], dist[:, 2], dist[:, 3]
    t2 = theta * theta
    return theta * (1.0 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))


def fisheye_undistort_theta(theta_d: Tensor, dist: Tensor, iters: int = _NEWTON_ITERS) -> Tensor:
    """Solve theta_d(theta) = theta_d for theta with a scalar Newton iteration. [R], [R,6] -> [R]."""
    k1, k2, k3, k4 = dist[:, 0], dist[:, 1], dist[:, 2], dist[:, 3]
    theta = theta_d.clone()
    for _ in range(iters):
        t2 = theta * theta
        f = theta * (1.0 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4)))) - theta_d
        df = 1.0 + t2 * (3.0 * k1 + t2 * (5.0 * k2 + t2 * (7.0 * k3 + t2 * 9.0 * k4)))
        ok = df.abs() > 1e-12
        theta = torch.where(ok, theta - f / torch.where(ok, df, torch.ones_like(df)), theta)
        # Stay on the physical branch (angle from the optical axis is within [0, pi]) so a bad step cannot diverge.
        theta = theta.clamp(0.0, math.pi)
    return theta


# ====================================================================== pixel <-> direction
def _masks(model: Tensor) -> list[tuple[int, Tensor]]:
    """(model index, bool mask [R]) for each model present in the batch (skips empty ones cheaply)."""
    out = []
    for m in range(len(CAMERA_MODELS)):
        mask = model == m
        if bool(mask.any()):
            out.append((m, mask))
    return out


def camera_directions(cameras: Cameras, cam_idx: Tensor, px: Tensor, py: Tensor) -> Tensor:
    """Unit ray directions in the camera frame (OpenGL axes) for continuous pixel coordinates.

    cameras: N cameras; cam_idx: [R] int64 camera index per ray; px, py: [R] float pixel coords (centres at +0.5).
    Returns dirs [R, 3] float32, unit norm, lens distortion removed (iterative undistortion).
    """
    cam_idx = torch.as_tensor(cam_idx, dtype=torch.int64, device=px.device)
    if cam_idx.dim() == 0:
        cam_idx = cam_idx.expand(px.shape[0])
    px = px.float()
    py = py.float()
    model = cameras.model[cam_idx]
    out = torch.empty(px.shape[0], 3, dtype=torch.float32, device=px.device)

    for m, mask in _masks(model):
        full = bool(mask.all())  # common case (one model per batch): skip the gather/scatter
        sel = cam_idx if full else cam_idx[mask]
        u = px if full else px[mask]
        v = py if full else py[mask]
        if m == EQUIRECTANGULAR:
            w = cameras.width[sel].float()
            h = cameras.height[sel].float()
            lon = (u / w - 0.5) * (2.0 * math.pi)
            lat = (0.5 - v / h) * math.pi
            cl = torch.cos(lat)
            d = torch.stack([cl * torch.sin(lon), torch.sin(lat), -cl * torch.cos(lon)], -1)
        else:
            # OpenCV normalised image plane (y down).
            xd = (u - cameras.cx[sel]) / cameras.fx[sel]
            yd = (v - cameras.cy[sel]) / cameras.fy[sel]
            if m == PINHOLE:
                d = torch.stack([xd, -yd, -torch.ones_like(xd)], -1)
            elif m == OPENCV:
                x, y = opencv_undistort(xd, yd, cameras.distortion[sel])
                d = torch.stack([x, -y, -torch.ones_like(x)], -1)
            else:  # OPENCV_FISHEYE: the distorted radius is the (distorted) angle from the optical axis.
                theta_d = torch.sqrt(xd * xd + yd * yd)
                theta = fisheye_undistort_theta(theta_d, cameras.distortion[sel])
                # sin(theta)/theta_d -> 1 as theta_d -> 0 (theta ~ theta_d there).
                safe = theta_d > 1e-8
                s = torch.where(safe, torch.sin(theta) / torch.where(safe, theta_d, torch.ones_like(theta_d)),
                                torch.ones_like(theta_d))
                d = torch.stack([xd * s, -yd * s, -torch.cos(theta)], -1)
        d = d / torch.linalg.vector_norm(d, dim=-1, keepdim=True)
        if full:
            out = d
        else:
            out[mask] = d
    return out


def project(cameras: Cameras, cam_idx: Tensor, dirs_cam: Tensor) -> tuple[Tensor, Tensor]:
    """Project camera-frame directions (OpenGL axes, any norm) to continuous pixel coords; inverse of
    :func:`camera_directions`.

    cam_idx: [R] int64; dirs_cam: [R, 3]. Returns px, py [R] float32.
    For PINHOLE / OPENCV, directions with dirs_cam[:, 2] >= 0 (behind the camera) give meaningless values: callers
    must mask them (``dirs_cam[:, 2] < 0``). Differentiable w.r.t. dirs_cam.
    """
    cam_idx = torch.as_tensor(cam_idx, dtype=torch.int64, device=dirs_cam.device)
    if cam_idx.dim() == 0:
        cam_idx = cam_idx.expand(dirs_cam.shape[0])
    dirs_cam = dirs_cam.float()
    model = cameras.model[cam_idx]
    px = torch.empty(dirs_cam.shape[0], dtype=torch.float32, device=dirs_cam.device)
    py = torch.empty_like(px)
    for m, mask in _masks(model):
        full = bool(mask.all())
        sel = cam_idx if full else cam_idx[mask]
        d = dirs_cam if full else dirs_cam[mask]
        # to OpenCV axes
        xc, yc, zc = d[:, 0], -d[:, 1], -d[:, 2]
        if m == EQUIRECTANGULAR:
            # atan2 for latitude too: asin loses precision next to the poles.
            lon = torch.atan2(xc, zc)
            lat = torch.atan2(-yc, torch.sqrt(xc * xc + zc * zc))
            u = (lon / (2.0 * math.pi) + 0.5) * cameras.width[sel].float()
            v = (0.5 - lat / math.pi) * cameras.height[sel].float()
        else:
            if m == OPENCV_FISHEYE:
                r = torch.sqrt(xc * xc + yc * yc)
                theta = torch.atan2(r, zc)
                theta_d = fisheye_theta_d(theta, cameras.distortion[sel])
                safe = r > 1e-12
                s = torch.where(safe, theta_d / torch.where(safe, r, torch.ones_like(r)), 1.0 / zc.clamp_min(1e-12))
                xd, yd = xc * s, yc * s
            else:
                x, y = xc / zc, yc / zc
                if m == OPENCV:
                    xd, yd = opencv_distort(x, y, cameras.distortion[sel])
                else:
                    xd, yd = x, y
            u = xd * cameras.fx[sel] + cameras.cx[sel]
            v = yd * cameras.fy[sel] + cameras.cy[sel]
        if full:
            px, py = u, v
        else:
            px = px.index_put((mask,), u)
            py = py.index_put((mask,), v)
    return px, py


# ====================================================================== rays


def z_depth_to_distance(z: Tensor, dirs_cam: Tensor) -> Tensor:
    """Depth along the optical axis (a depth camera's pixel value) -> distance along the unit ray of the same pixel.

    z: [...]; dirs_cam: [..., 3] unit camera-frame directions (OpenGL axes: the camera looks down -z), as
    :func:`camera_directions` returns them. Off-centre the distance is longer by 1 / cos of the ray's angle to the
    axis (~20 % at the corner of a 640x480 Kinect image)."""
    return z / (-dirs_cam[..., 2]).clamp_min(1e-3)


def distance_to_z_depth(t: Tensor, dirs_cam: Tensor) -> Tensor:
    """Distance along unit rays (the renderer's ``depth``) -> depth along the optical axis; inverse of
    :func:`z_depth_to_distance`."""
    return t * (-dirs_cam[..., 2])


def rays_from_c2w(c2w: Tensor, dirs_cam: Tensor) -> tuple[Tensor, Tensor]:
    """Rotate camera-frame directions into the world.

    c2w: [R, 3, 4]; dirs_cam: [R, 3]. Returns origins [R, 3], unit directions [R, 3].
    Differentiable w.r.t. c2w (pose refinement); re-normalises in case c2w is slightly non-orthonormal.
    """
    d = torch.einsum("rij,rj->ri", c2w[:, :3, :3], dirs_cam)
    d = d / torch.linalg.vector_norm(d, dim=-1, keepdim=True)
    return c2w[:, :3, 3], d


def generate_rays(
    cameras: Cameras, cam_idx: Tensor, px: Tensor, py: Tensor, c2w: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """World-space rays for pixels of given cameras.

    cam_idx: [R] int64; px, py: [R] pixel coords; c2w: optional [R, 3, 4] overriding cameras.c2w[cam_idx]
    (pose correction composes c2w @ delta per frame and passes it here). Returns origins [R,3], dirs [R,3] (unit).
    """
    cam_idx = torch.as_tensor(cam_idx, dtype=torch.int64, device=px.device)
    if cam_idx.dim() == 0:
        cam_idx = cam_idx.expand(px.shape[0])
    dirs = camera_directions(cameras, cam_idx, px, py)
    if c2w is None:
        c2w = cameras.c2w[cam_idx]
    return rays_from_c2w(c2w, dirs)


def image_rays(cameras: Cameras, index: int, c2w: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """All rays of one camera's image, row-major. Returns origins [H*W,3], dirs [H*W,3]."""
    w, h = int(cameras.width[index]), int(cameras.height[index])
    px, py = pixel_centers(w, h, device=cameras.device)
    idx = torch.full_like(px, index, dtype=torch.int64)
    if c2w is not None:
        c2w = c2w.reshape(1, 3, 4).expand(px.shape[0], 3, 4)
    return generate_rays(cameras, idx, px, py, c2w)
