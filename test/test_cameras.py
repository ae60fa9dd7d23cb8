"""Camera models, ray generation and geometry helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nerf_mapping.cameras import (
    CAMERA_MODELS,
    Cameras,
    camera_directions,
    generate_rays,
    image_rays,
    pixel_centers,
    project,
    rays_from_c2w,
)
from nerf_mapping.geometry import (
    focus_point,
    interpolate_se3,
    is_rigid,
    normalize_poses,
    opencv_to_opengl,
    quat_to_rotmat,
    rotmat_to_quat,
    se3_exp,
    se3_log,
    so3_exp,
    so3_log,
)

W, H = 320, 240
# Realistic lenses: the fox's OPENCV calibration (plus a little k3) and a ~190 degree equidistant fisheye (monotonic over the image).
DISTORTIONS = {
    "PINHOLE": [0, 0, 0, 0, 0, 0],
    "OPENCV": [0.0578421, -0.0805099, 0.01, 0.0, -0.000980296, 0.00015575],
    "OPENCV_FISHEYE": [0.05, -0.01, 0.002, -0.0005, 0, 0],
    "EQUIRECTANGULAR": [0, 0, 0, 0, 0, 0],
}
FOCAL = {"PINHOLE": 300.0, "OPENCV": 300.0, "OPENCV_FISHEYE": 120.0, "EQUIRECTANGULAR": 1.0}


def make_cams(c2w=None) -> Cameras:
    n = len(CAMERA_MODELS)
    if c2w is None:
        c2w = torch.eye(4)[:3].expand(n, 3, 4)
    return Cameras.create(
        c2w,
        fx=[FOCAL[m] for m in CAMERA_MODELS],
        fy=[FOCAL[m] * 1.01 for m in CAMERA_MODELS],
        cx=[W / 2 + 3.3] * n,
        cy=[H / 2 - 2.1] * n,
        width=W,
        height=H,
        distortion=[DISTORTIONS[m] for m in CAMERA_MODELS],
        model=torch.arange(n),
    )


@pytest.mark.parametrize("model", CAMERA_MODELS)
def test_round_trip_every_pixel(model):
    cams = make_cams()
    m = CAMERA_MODELS.index(model)
    px, py = pixel_centers(W, H)
    idx = torch.full_like(px, m, dtype=torch.int64)
    d = camera_directions(cams, idx, px, py)
    assert torch.allclose(d.norm(dim=-1), torch.ones(len(d)), atol=1e-5)
    u, v = project(cams, idx, d)
    err = torch.maximum((u - px).abs(), (v - py).abs()).max().item()
    assert err < 1e-3, f"{model}: round-trip error {err} px"


def test_distortion_is_not_identity():
    cams = make_cams()
    px, py = torch.tensor([5.5]), torch.tensor([7.5])
    d_pin = camera_directions(cams, torch.tensor([0]), px, py)
    d_cv = camera_directions(cams, torch.tensor([1]), px, py)
    assert (d_pin - d_cv).abs().max() > 1e-3


def test_fisheye_beyond_90_degrees():
    # equidistant fisheye without distortion: the corner at radius 200 px with f = 100 px is 2 rad off-axis,
    # i.e. the ray points backwards (z > 0 in OpenGL axes); round trip still exact
    cams = Cameras.create(torch.eye(4), 100.0, 100.0, W / 2, H / 2, W, H, model="OPENCV_FISHEYE")
    d = camera_directions(cams, torch.tensor([0]), torch.tensor([0.0]), torch.tensor([0.0]))
    assert torch.isclose(torch.acos(-d[0, 2]), torch.tensor(2.0), atol=1e-5)
    u, v = project(cams, torch.tensor([0]), d)
    assert abs(u.item()) < 1e-3 and abs(v.item()) < 1e-3


def test_mixed_models_batch_matches_single():
    cams = make_cams()
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 4, (500,), generator=g)
    px, py = torch.rand(500, generator=g) * W, torch.rand(500, generator=g) * H
    d = camera_directions(cams, idx, px, py)
    for m in range(4):
        k = idx == m
        d_single = camera_directions(cams, idx[k], px[k], py[k])
        assert torch.allclose(d[k], d_single)
    u, v = project(cams, idx, d)
    assert (u - px).abs().max() < 1e-3 and (v - py).abs().max() < 1e-3


def test_pinhole_principal_point_looks_minus_z():
    cams = make_cams()
    d = camera_directions(cams, torch.tensor([0]), cams.cx[:1], cams.cy[:1])
    assert torch.allclose(d, torch.tensor([[0.0, 0.0, -1.0]]), atol=1e-6)
    # +x pixel -> +X (right), +y pixel (down in the image) -> -Y (OpenGL up is +Y)
    d = camera_directions(cams, torch.tensor([0, 0]), cams.cx[:2] + torch.tensor([10.0, 0.0]),
                          cams.cy[:2] + torch.tensor([0.0, 10.0]))
    assert d[0, 0] > 0 and abs(d[0, 1]) < 1e-6 and d[1, 1] < 0 and abs(d[1, 0]) < 1e-6


def test_equirectangular_layout():
    cams = make_cams()
    e = torch.tensor([3])
    centre = camera_directions(cams, e, torch.tensor([W / 2]), torch.tensor([H / 2]))
    assert torch.allclose(centre, torch.tensor([[0.0, 0.0, -1.0]]), atol=1e-6)
    top = camera_directions(cams, e, torch.tensor([W / 2]), torch.tensor([0.0]))
    assert torch.allclose(top, torch.tensor([[0.0, 1.0, 0.0]]), atol=1e-6)
    right = camera_directions(cams, e, torch.tensor([0.75 * W]), torch.tensor([H / 2]))
    assert torch.allclose(right, torch.tensor([[1.0, 0.0, 0.0]]), atol=1e-6)


def test_pixel_centers():
    px, py = pixel_centers(3, 2)
    assert px.tolist() == [0.5, 1.5, 2.5, 0.5, 1.5, 2.5]
    assert py.tolist() == [0.5, 0.5, 0.5, 1.5, 1.5, 1.5]


def test_generate_rays_world_frame_and_override():
    R = so3_exp(torch.tensor([[0.3, -0.2, 0.5]]))[0]
    c2w = torch.cat([R, torch.tensor([[1.0], [2.0], [3.0]])], 1)
    cams = make_cams(c2w.expand(4, 3, 4))
    px, py = pixel_centers(W, H)
    idx = torch.zeros_like(px, dtype=torch.int64)
    o, d = generate_rays(cams, idx, px, py)
    assert torch.allclose(o, c2w[:, 3].expand_as(o))
    assert torch.allclose(d.norm(dim=-1), torch.ones(len(d)), atol=1e-5)
    # the principal-point ray is the camera's -Z axis in the world
    o1, d1 = generate_rays(cams, torch.tensor([0]), cams.cx[:1], cams.cy[:1])
    assert torch.allclose(d1[0], -R[:, 2], atol=1e-6)
    # override c2w: differentiable w.r.t. the pose
    c2w_var = torch.eye(4)[:3].clone().requires_grad_(True)
    o2, d2 = generate_rays(cams, idx[:10], px[:10], py[:10], c2w=c2w_var.expand(10, 3, 4))
    (o2.sum() + d2.sum()).backward()
    assert c2w_var.grad is not None and torch.isfinite(c2w_var.grad).all()
    oi, di = image_rays(cams, 0)
    assert oi.shape == (W * H, 3) and torch.allclose(di, d)


def test_rays_from_c2w_normalises():
    c2w = torch.eye(4)[:3].unsqueeze(0) * 2.0
    _, d = rays_from_c2w(c2w, torch.tensor([[0.0, 0.0, -1.0]]))
    assert torch.allclose(d, torch.tensor([[0.0, 0.0, -1.0]]))


def test_cameras_container_ops():
    cams = make_cams()
    assert len(cams) == 4
    one = cams[1]
    assert len(one) == 1 and one.model.item() == 1
    assert len(cams[1:3]) == 2 and len(cams[torch.tensor([0, 3])]) == 2
    both = Cameras.cat([cams, cams[0]])
    assert len(both) == 5
    half = cams.scaled(0.5)
    assert half.width[0].item() == W // 2 and half.height[0].item() == H // 2
    assert torch.allclose(half.fx, cams.fx * 0.5) and torch.allclose(half.cx, cams.cx * 0.5)
    # scaling preserves geometry: the same continuous point maps to the same direction
    d_full = camera_directions(cams, torch.tensor([1]), torch.tensor([100.0]), torch.tensor([50.0]))
    d_half = camera_directions(half, torch.tensor([1]), torch.tensor([50.0]), torch.tensor([25.0]))
    assert torch.allclose(d_full, d_half, atol=1e-6)
    assert cams.to("cpu").c2w.shape == (4, 3, 4)
    assert cams.intrinsics_matrices().shape == (4, 3, 3)
    with pytest.raises(ValueError):
        Cameras.create(torch.eye(4), 1, 1, 1, 1, 2, 2, model="KANNALA")


# ---------------------------------------------------------------------------------------------- geometry
def test_opencv_opengl_involution():
    R = so3_exp(torch.tensor([0.1, 0.2, 0.3])).numpy()
    c2w = np.concatenate([R, [[1.0], [2.0], [3.0]]], 1)
    gl = opencv_to_opengl(c2w)
    assert np.allclose(gl[:, 0], c2w[:, 0]) and np.allclose(gl[:, 1:3], -c2w[:, 1:3]) and np.allclose(gl[:, 3], c2w[:, 3])
    assert np.allclose(opencv_to_opengl(gl), c2w)
    t = torch.from_numpy(c2w)
    assert torch.allclose(opencv_to_opengl(t), torch.from_numpy(gl))
    assert is_rigid(gl) and not is_rigid(gl * 1.01)
    assert not is_rigid(np.diag([1.0, 1.0, -1.0]))  # reflection


def test_so3_se3_exp_log():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(200, 3, generator=g, dtype=torch.float64)
    w = w / w.norm(dim=-1, keepdim=True) * torch.rand(200, 1, generator=g, dtype=torch.float64) * (math.pi - 1e-3)
    R = so3_exp(w)
    assert is_rigid(R, 1e-9)
    assert torch.allclose(so3_log(R), w, atol=1e-7)
    # near pi and near 0
    wp = w / w.norm(dim=-1, keepdim=True) * (math.pi - 1e-6)
    assert torch.allclose(so3_log(so3_exp(wp)), wp, atol=1e-5)
    ws = w * 1e-6
    assert torch.allclose(so3_log(so3_exp(ws)), ws, atol=1e-12)
    xi = torch.cat([torch.randn(200, 3, generator=g, dtype=torch.float64), w], -1)
    assert torch.allclose(se3_log(se3_exp(xi)), xi, atol=1e-6)
    # Taylor-safe gradients at exactly zero (pose refinement starts at the identity)
    z = torch.zeros(3, 6, requires_grad=True)
    T = se3_exp(z)
    assert torch.allclose(T, torch.eye(4)[:3].expand(3, 3, 4))
    T.sum().backward()
    assert torch.isfinite(z.grad).all()
    z3 = torch.zeros(2, 3, requires_grad=True)
    so3_log(so3_exp(z3)).sum().backward()
    assert torch.allclose(z3.grad, torch.ones(2, 3))


def test_quaternions():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(500, 4, generator=g, dtype=torch.float64)
    q = q / q.norm(dim=-1, keepdim=True)
    q = torch.where(q[:, :1] < 0, -q, q)
    R = quat_to_rotmat(q)
    assert is_rigid(R, 1e-9)
    assert torch.allclose(rotmat_to_quat(R), q, atol=1e-9)
    # identity and 180 degree rotations (the hard cases of the trace formula)
    assert torch.allclose(rotmat_to_quat(torch.eye(3)), torch.tensor([1.0, 0, 0, 0]))
    for axis in range(3):
        Rpi = -torch.eye(3, dtype=torch.float64)
        Rpi[axis, axis] = 1.0
        assert torch.allclose(quat_to_rotmat(rotmat_to_quat(Rpi)), Rpi, atol=1e-9)


def test_interpolate_se3():
    T0 = np.eye(4)
    T1 = np.eye(4)
    T1[:3, :3] = so3_exp(torch.tensor([0.0, 0.0, 1.2], dtype=torch.float64)).numpy()
    T1[:3, 3] = [2.0, -1.0, 0.5]
    Ti = interpolate_se3(T0, T1, 0.25)
    assert np.allclose(so3_log(torch.from_numpy(Ti[:3, :3])).numpy(), [0, 0, 0.3])
    assert np.allclose(Ti[:3, 3], [0.5, -0.25, 0.125])
    assert np.allclose(interpolate_se3(T0, T1, 0.0), T0) and np.allclose(interpolate_se3(T0, T1, 1.0), T1)
    assert interpolate_se3(T0[:3], T1[:3], 0.5).shape == (3, 4)


def _look_at(eye, target):
    eye, target = np.asarray(eye, float), np.asarray(target, float)
    back = eye - target
    back /= np.linalg.norm(back)
    right = np.cross([0.0, 0.0, 1.0], back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    return np.stack([right, up, back, eye], 1)


def test_focus_point_and_normalisation():
    target = np.array([1.0, -2.0, 0.5])
    ang = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    c2w = np.stack([_look_at(target + [5 * np.cos(a), 5 * np.sin(a), 1.0 + 0.3 * np.sin(3 * a)], target)
                    for a in ang])
    assert np.allclose(focus_point(c2w), target, atol=1e-6)
    T, s = normalize_poses(c2w)
    centres = c2w[:, :, 3] @ T[:, :3].T + T[:, 3]
    assert np.isclose(np.linalg.norm(centres, axis=-1).max(), 1.0)
    assert np.allclose(T[:, :3] @ target + T[:, 3], 0, atol=1e-9)
    # parallel axes (forward-facing) -> falls back to the mean camera centre
    par = np.stack([_look_at([x, 0.0, 0.0], [x, 10.0, 0.0]) for x in (0.0, 1.0, 2.0)])
    assert np.allclose(focus_point(par), [1.0, 0.0, 0.0])
