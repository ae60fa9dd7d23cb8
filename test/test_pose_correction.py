"""Pose-correction module: parametrisations round-trip, gradients flow, gauge, schedules, coarse-to-fine, metrics."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nerf_mapping.geometry import is_rigid, so3_exp
from nerf_mapping.pose.correction import (
    MODES,
    PARAM_DIMS,
    PoseCorrection,
    PoseCorrectionConfig,
    c2f_level_weights,
    deltas_to_params,
    params_to_deltas,
)
from nerf_mapping.evaluation.poses import (
    align_poses,
    align_poses_by_orientation,
    apply_sim3,
    perturb_poses,
    pose_errors,
    rotation_errors_deg,
    umeyama,
)
from nerf_mapping.geometry import to_file_frame

PARAM_MODES = [m for m in MODES if m != "off"]


def _random_rigid(n: int, seed: int = 0, max_angle: float = 2.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, 3, generator=g, dtype=torch.float64)
    w = w / w.norm(dim=-1, keepdim=True) * torch.rand(n, 1, generator=g, dtype=torch.float64) * max_angle
    t = torch.randn(n, 3, generator=g, dtype=torch.float64)
    return torch.cat([so3_exp(w), t[:, :, None]], -1)


@pytest.mark.parametrize("mode", PARAM_MODES)
def test_parametrisation_round_trip(mode):
    d = _random_rigid(32, seed=1)
    p = deltas_to_params(d, mode)
    assert p.shape == (32, PARAM_DIMS[mode])
    d2 = params_to_deltas(p, mode)
    assert torch.allclose(d2, d, atol=1e-9)
    # and params -> deltas -> params for small random parameters (the canonical representative)
    p0 = torch.randn(16, PARAM_DIMS[mode], dtype=torch.float64) * 0.1
    d0 = params_to_deltas(p0, mode)
    assert is_rigid(d0, tol=1e-9)
    assert torch.allclose(params_to_deltas(deltas_to_params(d0, mode), mode), d0, atol=1e-9)
    # zero parameters are the identity
    z = params_to_deltas(torch.zeros(3, PARAM_DIMS[mode], dtype=torch.float64), mode)
    assert torch.allclose(z, torch.eye(3, 4, dtype=torch.float64).expand(3, 3, 4))


@pytest.mark.parametrize("mode", PARAM_MODES)
def test_gradients_flow_and_match_finite_differences(mode):
    pc = PoseCorrection(PoseCorrectionConfig(mode=mode, gauge="none"), num_frames=3).double()
    with torch.no_grad():
        pc.params.normal_(0, 0.05)
    c2w = _random_rigid(3, seed=2)
    ids = torch.tensor([0, 1, 2, 1])
    target = torch.randn(4, 3, 4, dtype=torch.float64)

    def loss_fn():
        return ((pc(c2w[ids], ids) - target) ** 2).sum()

    loss = loss_fn()
    loss.backward()
    g = pc.params.grad.clone()
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert (g.abs().sum(-1) > 0).all()  # every frame in the batch gets a gradient
    # finite differences on a few coordinates
    eps = 1e-6
    for (i, j) in [(0, 0), (1, 2), (2, PARAM_DIMS[mode] - 1)]:
        with torch.no_grad():
            pc.params[i, j] += eps
            lp = float(loss_fn())
            pc.params[i, j] -= 2 * eps
            lm = float(loss_fn())
            pc.params[i, j] += eps
        assert abs((lp - lm) / (2 * eps) - float(g[i, j])) < 1e-4 * max(1.0, abs(float(g[i, j])))


@pytest.mark.parametrize("mode", PARAM_MODES)
def test_gradient_at_identity_is_finite(mode):
    pc = PoseCorrection(PoseCorrectionConfig(mode=mode, gauge="none"), num_frames=2)
    c2w = _random_rigid(2, seed=3).float()
    out = pc(c2w, torch.tensor([0, 1]))
    assert torch.allclose(out, c2w, atol=1e-6)
    out.sum().backward()
    assert torch.isfinite(pc.params.grad).all()


def test_frames_without_parameters_yet_keep_their_input_pose():
    """A keyframe that arrived after the last training step's sync has no parameters yet: an export or a text query
    in that window reads its pose through the correction and must get the input pose, not an index error (seen in
    the demo: ExportMesh failed with 'index 815 is out of bounds for dimension 0 with size 815')."""
    pc = PoseCorrection(PoseCorrectionConfig(mode="so3xr3", gauge="none"), num_frames=2)
    with torch.no_grad():
        pc.params.add_(0.01)
    c2w = _random_rigid(4, seed=5).float()
    ids = torch.tensor([0, 1, 2, 3])
    out = pc(c2w, ids)
    assert not torch.allclose(out[:2], c2w[:2], atol=1e-4)  # trained frames are corrected
    assert torch.allclose(out[2:], c2w[2:], atol=1e-6)  # the two new ones keep their input pose
    assert torch.allclose(pc.refined(c2w, ids), out)


def test_gradients_reach_poses_through_the_field():
    """Pose parameters get a gradient through ray origins/directions and the (native or torch) hash encoding."""
    from nerf_mapping.cameras import rays_from_c2w
    from nerf_mapping.fields.ngp_field import FieldConfig, NGPField

    cfg = FieldConfig()
    cfg.encoding.log2_hashmap_size = 12
    field = NGPField(cfg, torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]), False)
    with torch.no_grad():
        field.encoding.table.uniform_(-1, 1)
    pc = PoseCorrection(PoseCorrectionConfig(mode="se3", gauge="none"), num_frames=2)
    c2w = torch.eye(3, 4).expand(2, 3, 4).clone()
    c2w[:, 2, 3] = 0.5
    ids = torch.tensor([0, 1, 1])
    dirs_cam = torch.nn.functional.normalize(torch.tensor([[0.1, 0.0, -1.0], [0.0, 0.2, -1.0], [-0.1, 0.1, -1.0]]), dim=-1)
    o, d = rays_from_c2w(pc(c2w[ids], ids), dirs_cam)
    pos = o[:, None, :] + d[:, None, :] * torch.linspace(0.1, 1.0, 8)[None, :, None]
    sigma, _ = field.density(pos.reshape(-1, 3))
    sigma.sum().backward()
    g = pc.params.grad
    assert torch.isfinite(g).all()
    assert g[0].abs().sum() > 0 and g[1].abs().sum() > 0


def test_gauge_fix_first_and_mean():
    pc = PoseCorrection(PoseCorrectionConfig(mode="so3xr3", gauge="fix_first"), num_frames=4)
    with torch.no_grad():
        pc.params.normal_(0, 0.1)
    c2w = _random_rigid(4, seed=4).float()
    out = pc(c2w, torch.arange(4))
    assert torch.allclose(out[0], c2w[0])  # the anchor frame never moves
    out.sum().backward()
    assert pc.params.grad[0].abs().sum() == 0
    pm = PoseCorrection(PoseCorrectionConfig(mode="so3xr3", gauge="mean"), num_frames=4)
    with torch.no_grad():
        pm.params.normal_(0, 0.1)
    assert pm.effective_params().mean(0).abs().max() < 1e-6


def test_ensure_size_keeps_values_and_state_dict_round_trip():
    pc = PoseCorrection(PoseCorrectionConfig(mode="6d"), num_frames=2)
    with torch.no_grad():
        pc.params.normal_()
    before = pc.params.detach().clone()
    assert pc.ensure_size(5) and not pc.ensure_size(3)
    assert pc.params.shape == (5, 9)
    assert torch.equal(pc.params[:2].detach(), before) and pc.params[2:].abs().sum() == 0
    pc2 = PoseCorrection(PoseCorrectionConfig(mode="6d"), num_frames=1)
    pc2.ensure_size(pc.state_dict()["params"].shape[0])
    pc2.load_state_dict(pc.state_dict())
    assert torch.equal(pc2.params, pc.params)


def test_lr_schedule_and_c2f_weights():
    cfg = PoseCorrectionConfig(mode="so3xr3", lr=1e-2, lr_final=1e-4, warmup_steps=10, c2f=(0.2, 0.6),
                               start_steps=0)
    pc = PoseCorrection(cfg, 2)
    assert pc.lr_at(0, 0.0) == pytest.approx(1e-3)
    assert pc.lr_at(100, 0.0) == pytest.approx(1e-2)
    assert pc.lr_at(100, 0.5) == pytest.approx(1e-3)
    assert pc.lr_at(100, 1.0) == pytest.approx(1e-4)
    delayed = PoseCorrection(PoseCorrectionConfig(mode="so3xr3", lr=1e-2, warmup_steps=10, start_steps=20), 2)
    assert delayed.lr_at(0, 0.0) == 0.0 and delayed.lr_at(19, 0.0) == 0.0
    assert delayed.lr_at(20, 0.0) == pytest.approx(1e-3) and delayed.lr_at(29, 0.0) == pytest.approx(1e-2)
    assert pc.c2f_alpha(0.1) == 0.0 and pc.c2f_alpha(0.4) == pytest.approx(0.5) and pc.c2f_alpha(0.9) == 1.0
    w0 = c2f_level_weights(0.0, 16, 2)
    assert torch.equal(w0[:2], torch.ones(2)) and w0[2:].abs().max() == 0
    w = c2f_level_weights(0.5, 16, 2)
    assert (w[1:] <= w[:-1] + 1e-7).all() and 0 < w[8] < 1 or w[8] in (0.0, 1.0)
    assert torch.allclose(c2f_level_weights(1.0, 16, 2), torch.ones(16))

    class _Enc:
        class cfg:  # noqa: N801
            n_levels = 16

        def __init__(self):
            self.w = "unset"

        def set_level_weights(self, w):
            self.w = w

    from nerf_mapping.extension import StepContext

    field = type("F", (), {})()
    field.encoding = _Enc()
    pc.rebuild_optimizer()
    pc.before_step(StepContext(step=50, progress=0.4, lr_factor=1.0, field=field))
    assert field.encoding.w is not None and field.encoding.w.shape == (16,)
    assert pc.optimizer.param_groups[0]["lr"] == pytest.approx(pc.lr_at(50, 0.4))
    pc.before_step(StepContext(step=51, progress=0.7, lr_factor=1.0, field=field))
    tr = type("T", (), {"field": field})()
    assert tr.field.encoding.w is None  # annealing done: weights removed


def test_regularizer_is_light_and_differentiable():
    pc = PoseCorrection(PoseCorrectionConfig(mode="quat", gauge="none", reg_weight=1e-3), 3)
    with torch.no_grad():
        pc.params.normal_(0, 0.1)
    r = pc.regularizer(torch.tensor([0, 2, 2]))
    assert r > 0
    r.backward()
    assert pc.params.grad[1].abs().sum() == 0 and pc.params.grad[0].abs().sum() > 0
    assert float(PoseCorrection(PoseCorrectionConfig(mode="off"), 3).regularizer(torch.tensor([0]))) == 0.0


def test_umeyama_alignment_and_errors():
    gt = _random_rigid(20, seed=5).numpy()
    gt[:, :, 3] *= 3.0
    s, R = 2.5, so3_exp(torch.tensor([0.3, -0.2, 0.9], dtype=torch.float64)).numpy()
    t = np.array([1.0, -2.0, 0.5])
    moved = apply_sim3(s, R, t, gt)
    s2, R2, t2 = umeyama(gt[:, :, 3], moved[:, :, 3])
    assert s2 == pytest.approx(s) and np.allclose(R2, R) and np.allclose(t2, t)
    aligned, _ = align_poses(moved, gt)
    assert np.allclose(aligned, gt, atol=1e-9)
    e = pose_errors(moved, gt, unit_to_mm=100.0)
    assert e["median_rotation_deg"] < 1e-6 and e["median_translation"] < 1e-9 and e["median_translation_mm"] < 1e-6
    e_raw = pose_errors(moved, gt, align=False)
    assert e_raw["median_rotation_deg"] > 10


def test_orientation_alignment_recovers_a_similarity_and_ignores_centre_tilt():
    """The orientation-based fit recovers an exact similarity like the centre fit; on cameras along a narrow arc
    whose centres carry a correlated error (an orbit about the object) but whose orientations are exact, it keeps
    the rotation error at zero where the centre fit tilts every camera."""
    gt = _random_rigid(20, seed=7).numpy()
    gt[:, :, 3] *= 3.0
    s, R = 0.7, so3_exp(torch.tensor([-0.4, 0.1, 0.6], dtype=torch.float64)).numpy()
    moved = apply_sim3(s, R, np.array([0.5, 0.2, -1.0]), gt)
    aligned, (s2, R2, _) = align_poses_by_orientation(moved, gt)
    assert np.allclose(aligned, gt, atol=1e-9) and s2 == pytest.approx(1 / s) and np.allclose(R2, R.T)
    # 30 cameras on a 40-degree arc, 4 units from the origin, looking at it (OpenGL: -z forward)
    ang = np.radians(np.linspace(-20, 20, 30))
    c = np.stack([4 * np.sin(ang), np.zeros_like(ang), 4 * np.cos(ang)], -1)
    rot = np.stack([so3_exp(torch.tensor([0.0, a, 0.0], dtype=torch.float64)).numpy() for a in ang])
    arc = np.concatenate([rot, c[:, :, None]], -1)
    bent = arc.copy()
    bent[:, 2, 3] += 0.2 * np.sin(ang)  # correlated depth error along the arc (half an orbit), orientations exact
    assert pose_errors(bent, arc, align="orientation")["median_rotation_deg"] < 1e-6
    assert pose_errors(bent, arc)["median_rotation_deg"] > 0.05


def test_config_override_types():
    from nerf_mapping.config import override
    from nerf_mapping.training.trainer import TrainerConfig

    cfg = TrainerConfig()
    override(cfg, "threads", "1")  # an optional int: stays an int (torch.set_num_threads rejects floats)
    override(cfg, "pose.lr", "5e-3")
    override(cfg, "mask_background", "true")
    override(cfg, "field.encoding.log2_hashmap_size", "17")
    assert cfg.threads == 1 and isinstance(cfg.threads, int)
    assert cfg.pose.lr == 5e-3 and cfg.mask_background is True and cfg.field.encoding.log2_hashmap_size == 17
    with pytest.raises(ValueError):
        override(cfg, "pose.no_such_field", "1")


def test_perturb_poses_statistics():
    c2w = _random_rigid(400, seed=6).float()
    noisy = perturb_poses(c2w, 5.0, 0.1, seed=3)
    assert torch.equal(noisy[0], c2w[0])  # anchor frame kept exact
    assert is_rigid(noisy, tol=1e-5)
    r = rotation_errors_deg(noisy.numpy(), c2w.numpy())[1:]
    assert math.sqrt((r ** 2).mean()) == pytest.approx(5.0, rel=0.1)
    # the rotation noise turns the camera about its own centre: centres move only by the translation noise
    dt = np.linalg.norm((noisy - c2w)[1:, :, 3].numpy(), axis=-1)
    assert math.sqrt((dt ** 2).mean()) == pytest.approx(0.1, rel=0.1)
    assert torch.equal(perturb_poses(c2w, 5.0, 0.1, seed=3), noisy)


def test_to_file_frame_inverts_world_transform():
    from nerf_mapping.geometry import transform_poses

    c2w_file = _random_rigid(5, seed=7).numpy()
    W = np.concatenate([0.25 * so3_exp(torch.tensor([0.1, 0.2, -0.3], dtype=torch.float64)).numpy(),
                        np.array([[0.5], [-1.0], [2.0]])], 1)
    scene = transform_poses(W, c2w_file)
    assert np.allclose(to_file_frame(W, scene), c2w_file, atol=1e-9)


# ---------------------------------------------------------------------------------------------- preconditioning
def _camera_at(distance: float = 4.0):
    from nerf_mapping.cameras import Cameras

    c2w = torch.eye(4)[:3].clone()
    c2w[2, 3] = distance  # looking down -z at the origin (OpenGL)
    return Cameras.create(c2w[None], 111.0, 111.0, 50.0, 50.0, 100, 100)


def test_frustum_points_lie_in_front_of_the_camera_inside_the_box():
    from nerf_mapping.pose.correction import frustum_points

    pts = frustum_points(_camera_at(4.0), [[-1.5] * 3, [1.5] * 3], 0.5, 10.0)
    assert pts.shape == (8 * 8 * 3, 3)
    assert (pts[:, 2] < 0).all()  # in front of an OpenGL camera
    world = pts + torch.tensor([0.0, 0.0, 4.0], dtype=pts.dtype)
    assert (world.abs() <= 1.5 + 1e-6).all()


@pytest.mark.parametrize("mode", ["so3xr3", "se3"])
def test_camp_preconditioner_whitens_the_image_motion(mode):
    """Uncapped, (J P)^T (J P) / N = I: every direction of phi moves the image by the same amount."""
    from nerf_mapping.pose.correction import camp_preconditioner, frustum_points

    pts = frustum_points(_camera_at(4.0), [[-1.5] * 3, [1.5] * 3], 0.5, 10.0)
    P = camp_preconditioner(pts, mode)
    assert torch.allclose(P, P.T, atol=1e-10)

    def coords(p):
        d = params_to_deltas(p[None], mode)[0]
        y = (pts.double() - d[:, 3]) @ d[:, :3]
        return torch.stack([y[:, 0] / -y[:, 2], y[:, 1] / -y[:, 2]], -1).reshape(-1)

    J = torch.autograd.functional.jacobian(coords, torch.zeros(6, dtype=torch.float64))
    M = (J @ P).T @ (J @ P) / pts.shape[0]
    assert torch.allclose(M, torch.eye(6, dtype=torch.float64), atol=1e-5)
    # translation steps are scaled up by about the depth (4 units), rotation steps stay about 1
    tz, rx = (5, 0) if mode == "so3xr3" else (2, 3)  # se3 twists are (rho, omega)
    assert 2.0 < P[tz, tz] < 20.0 and 0.5 < P[rx, rx] < 4.0
    capped = camp_preconditioner(pts, mode, max_gain=5.0)
    g = torch.linalg.eigvalsh(capped)
    assert float(g.max() / g.min()) <= 5.0 + 1e-6


def test_preconditioned_parameters_keep_the_correction_and_round_trip_checkpoints():
    cfg = PoseCorrectionConfig(mode="so3xr3", gauge="none", precondition="camp")
    pc = PoseCorrection(cfg, num_frames=2).double()
    with torch.no_grad():
        pc.params[1] = torch.tensor([0.01, -0.02, 0.005, 0.03, 0.0, -0.01], dtype=torch.float64)
    before = pc.all_deltas()[1].clone()
    assert pc.needs_preconditioner() == [0, 1]
    pc.set_preconditioner(1, _camera_at(4.0), [[-1.5] * 3, [1.5] * 3], 0.5, 10.0)
    assert pc.needs_preconditioner() == [0]
    assert not torch.allclose(pc.precond[1], torch.eye(6, dtype=torch.float64))
    assert torch.allclose(pc.all_deltas()[1], before, atol=1e-9)  # same pose, new coordinates
    st = pc.state_dict()
    pc2 = PoseCorrection(cfg, num_frames=2).double()
    pc2.load_state_dict(st)
    assert torch.allclose(pc2.all_deltas(), pc.all_deltas()) and pc2.needs_preconditioner() == []
    # checkpoints written before preconditioning existed load with identity preconditioners
    old = {"params": st["params"]}
    pc3 = PoseCorrection(cfg, num_frames=2).double()
    pc3.load_state_dict(old)
    assert torch.allclose(pc3.effective_params(), st["params"])
    # re-indexing keeps parameters and preconditioners together
    pc.select([1])
    assert torch.allclose(pc.all_deltas()[0], before, atol=1e-9)
    assert PoseCorrection(PoseCorrectionConfig(mode="so3xr3", precondition="none"), 2).needs_preconditioner() == []
    with pytest.raises(ValueError):
        PoseCorrection(PoseCorrectionConfig(mode="so3xr3", precondition="bogus"))


def test_drift_spline_moves_frames_in_the_world_frame_and_round_trips():
    cfg = PoseCorrectionConfig(mode="so3xr3", precondition="none", drift_knot_s=1.0)
    pc = PoseCorrection(cfg, num_frames=4).double()
    A = _random_rigid(4, seed=3)
    times = [100.0, 100.5, 102.25, None]  # the last frame has no time: no drift term
    grew = [pc.register_frame(i, A[i], t) for i, t in enumerate(times)]
    assert grew == [False, False, True, False] and pc.knots.shape[0] == 4  # 2.25 s -> knots at 0, 1, 2, 3 s
    assert pc.needs_registration() == []
    inc = torch.tensor([[9.0] * 6, [0.0, 0.0, 0.02, 0.1, 0.0, 0.0], [0.0, 0.0, 0.02, 0.0, 0.1, 0.0], [0.0] * 6],
                       dtype=torch.float64)
    with torch.no_grad():
        pc.knots.copy_(inc)
    K = pc.knot_values()
    assert torch.allclose(K[0], torch.zeros(6, dtype=torch.float64))  # gauge: the first increment is ignored
    assert torch.allclose(K[2], inc[1] + inc[2]) and torch.allclose(K[3], K[2])  # cumulative (random-walk) knots
    refined = pc.refined(A.clone())
    L = pc.drift_transforms()
    for i, t in enumerate(times):
        if t is None:
            assert torch.allclose(refined[i], A[i], atol=1e-9)
            continue
        u = t - 100.0
        k0 = int(u)
        p = K[k0] * (1 - (u - k0)) + K[k0 + 1] * (u - k0)
        expect = torch.cat([so3_exp(p[None, :3])[0], p[3:, None]], -1)
        assert torch.allclose(L[i], expect, atol=1e-9)
        # refined = L(t) @ A (world frame, rotation about the map origin)
        want = torch.cat([expect[:, :3] @ A[i][:, :3], expect[:, :3] @ A[i][:, 3:] + expect[:, 3:]], -1)
        assert torch.allclose(refined[i], want, atol=1e-9)
    assert torch.allclose(refined[0], A[0], atol=1e-9)  # the first frame's time is the anchored knot
    # gradients reach the increments through the ray generator
    out = pc(A[[1, 2]], torch.tensor([1, 2]))
    out.sum().backward()
    assert pc.knots.grad is not None and pc.knots.grad[1:3].abs().sum() > 0
    # checkpoint round trip (the spline is sized from the checkpoint) and re-indexing
    st = pc.state_dict()
    pc2 = PoseCorrection(cfg, num_frames=4).double()
    pc2.load_state_dict(st)
    assert pc2.knots.shape == pc.knots.shape and torch.allclose(pc2.refined(A.clone()), refined)
    assert pc2.needs_registration() == []
    pc.select([2, 0])
    assert torch.allclose(pc.refined(A[[2, 0]].clone()), refined[[2, 0]], atol=1e-9)
    # an optimizer group of its own, on the same schedule
    opt = pc.make_optimizer()
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["params"][0] is pc.knots
    # off by default and for untimed frames, and validated
    assert PoseCorrection(PoseCorrectionConfig(mode="so3xr3"), 2).needs_registration() == []
    with pytest.raises(ValueError):
        PoseCorrection(PoseCorrectionConfig(mode="so3xr3", drift_knot_s=-1.0))
