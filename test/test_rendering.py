"""Packed volume rendering vs a per-ray reference loop; contraction; SH basis; occupancy-grid behaviour."""
import math

import pytest
import torch

from nerf_mapping.fields.contraction import contract, to_unit_cube
from nerf_mapping.fields.sh_encoding import sh_encode
from nerf_mapping.rendering.compositing import accumulate_along_rays, render_transmittance, render_weights


def _packed_example(seed=0):
    g = torch.Generator().manual_seed(seed)
    counts = torch.tensor([3, 0, 5, 1, 7])
    ray_idx = torch.repeat_interleave(torch.arange(5), counts)
    s = ray_idx.numel()
    dt = torch.rand(s, generator=g) * 0.1 + 0.01
    t_starts = torch.zeros(s)
    for r in range(5):
        m = ray_idx == r
        t_starts[m] = torch.cumsum(dt[m], 0) - dt[m] + 1.0
    sig = torch.rand(s, generator=g) * 20
    return ray_idx, t_starts, t_starts + dt, sig


def test_weights_match_per_ray_loop():
    ray_idx, t0, t1, sig = _packed_example()
    w = render_weights(sig, t0, t1, ray_idx, 5)
    for r in range(5):
        m = ray_idx == r
        T = 1.0
        for k, i in enumerate(torch.nonzero(m).squeeze(1).tolist()):
            a = 1 - math.exp(-float(sig[i]) * float(t1[i] - t0[i]))
            assert abs(float(w[i]) - T * a) < 1e-5
            T *= 1 - a
    # opacity <= 1 and the empty ray gets zero
    op = accumulate_along_rays(w, ray_idx, 5)[:, 0]
    assert float(op.max()) <= 1.0 + 1e-6 and float(op[1]) == 0.0


def test_weights_gradient_matches_finite_differences():
    ray_idx, t0, t1, sig = _packed_example(1)
    sig = sig.double().requires_grad_()
    rgb = torch.rand(sig.shape[0], 3, dtype=torch.float64)

    def f(s):
        w = render_weights(s, t0.double(), t1.double(), ray_idx, 5)
        return accumulate_along_rays(w, ray_idx, 5, rgb).sum()

    assert torch.autograd.gradcheck(f, (sig,), eps=1e-6, atol=1e-5)


def test_transmittance_starts_at_one_per_ray():
    ray_idx, t0, t1, sig = _packed_example(2)
    trans, _ = render_transmittance(sig, t0, t1, ray_idx, 5)
    first = torch.cat([torch.tensor([True]), ray_idx[1:] != ray_idx[:-1]])
    assert torch.allclose(trans[first], torch.ones(int(first.sum())))
    assert bool((trans[1:][~first[1:]] <= trans[:-1][~first[1:]] + 1e-6).all())


def test_contraction_keeps_inner_box_and_bounds_outside():
    x = torch.tensor([[0.3, -0.9, 0.5], [10.0, 0.0, 0.0], [-1e6, 2.0, 3.0]])
    y = contract(x)
    assert torch.allclose(y[0], x[0])
    assert bool((y.abs() < 2.0).all())
    box = torch.tensor([[-2.0, -2.0, -2.0], [2.0, 2.0, 2.0]])
    u = to_unit_cube(torch.tensor([[0.0, 0.0, 0.0], [2.0, 2.0, 2.0]]), box, unbounded=False)
    assert torch.allclose(u, torch.tensor([[0.5, 0.5, 0.5], [1.0, 1.0, 1.0]]))


def test_sh_basis_is_orthonormal_on_the_sphere():
    g = torch.Generator().manual_seed(0)
    d = torch.randn(200000, 3, generator=g, dtype=torch.float64)
    d = d / d.norm(dim=-1, keepdim=True)
    b = sh_encode(d, 4)
    gram = (b.T @ b) * (4 * math.pi / d.shape[0])
    assert torch.allclose(gram, torch.eye(16, dtype=torch.float64), atol=0.03)


def test_render_camera_outputs_and_feature_heads():
    """The renderer returns rgb/depth/opacity and feature heads for any camera, also for rays that hit nothing."""
    from nerf_mapping.cameras import Cameras
    from nerf_mapping.fields.hash_encoding import HashEncodingConfig
    from nerf_mapping.fields.ngp_field import FieldConfig, NGPField
    from nerf_mapping.rendering.occupancy_grid import OccupancyGrid, OccupancyGridConfig
    from nerf_mapping.rendering.renderer import RenderConfig, render_camera

    box = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    field = NGPField(FieldConfig(encoding=HashEncodingConfig(n_levels=4, log2_hashmap_size=12, max_resolution=64)),
                     box, unbounded=False)

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(field.cfg.geo_feat_dim, 5)

        def forward(self, unit_coords, geo_feat):
            return self.lin(geo_feat)

    field.add_head("feat", Head())
    grid = OccupancyGrid(OccupancyGridConfig(resolution=16), box.reshape(6), levels=1)
    c2w = torch.tensor([[[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 3.0]]])
    cams = Cameras.create(c2w, 20.0, 20.0, 8.0, 6.0, 16, 12)
    cfg = RenderConfig().resolved(box, False)
    out = render_camera(field, grid, cams, 0, cfg, torch.ones(3), 0.1, 10.0, feature_heads=["feat"])
    assert out["rgb"].shape == (12, 16, 3) and out["depth"].shape == (12, 16) and out["feat"].shape == (12, 16, 5)
    # looking away from the box: background only, zero opacity, features still present
    cams2 = Cameras.create(torch.tensor([[[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, -3.0]]]), 20.0, 20.0, 8.0, 6.0, 16, 12)
    out2 = render_camera(field, grid, cams2, 0, cfg, torch.ones(3), 0.1, 10.0, feature_heads=["feat"])
    assert float(out2["opacity"].max()) == 0.0 and torch.allclose(out2["rgb"], torch.ones(12, 16, 3))
    assert out2["feat"].shape == (12, 16, 5)
    # coarse-to-fine pixel order: the same image; past its deadline it stops at a chunk end after min_pixels
    from nerf_mapping.rendering.budget import lattice_order

    order, (n4, n2) = lattice_order(16, 12)
    out3 = render_camera(field, grid, cams, 0, cfg, torch.ones(3), 0.1, 10.0, feature_heads=["feat"],
                         pixel_order=order, chunk=50)
    assert int(out3["rendered_pixels"]) == 192
    for k in ("rgb", "depth", "opacity", "feat"):
        assert torch.allclose(out3[k], out[k], atol=1e-5), k
    late = render_camera(field, grid, cams, 0, cfg, torch.ones(3), 0.1, 10.0, pixel_order=order, chunk=10,
                         deadline=0.0, min_pixels=n4)
    assert int(late["rendered_pixels"]) == 20 and n4 <= 20 < n2
    assert torch.allclose(late["rgb"][::4, ::4], out["rgb"][::4, ::4], atol=1e-5)


def test_lattice_order_renders_coarse_to_fine_and_a_stopped_render_keeps_its_finest_complete_lattice():
    from nerf_mapping.rendering.budget import lattice_image, lattice_order

    order, (n4, n2) = lattice_order(10, 7)
    assert sorted(order.tolist()) == list(range(70))  # a permutation: every pixel once
    y, x = order // 10, order % 10
    assert ((x[:n4] % 4 == 0) & (y[:n4] % 4 == 0)).all() and n4 == 3 * 2
    assert ((x[:n2] % 2 == 0) & (y[:n2] % 2 == 0)).all() and n2 == 5 * 4
    img = torch.arange(70.0).reshape(7, 10, 1)
    out = {"rgb": img, "n": torch.tensor(3)}
    assert lattice_image(out, 70, (n4, n2))["rgb"] is img  # complete: the image itself
    assert torch.equal(lattice_image(out, n2, (n4, n2))["rgb"], img[::2, ::2])
    assert torch.equal(lattice_image(out, n2 - 1, (n4, n2))["rgb"], img[::4, ::4])
    with pytest.raises(ValueError, match="coarsest lattice"):
        lattice_image(out, n4 - 1, (n4, n2))


def test_render_budget_picks_the_largest_size_that_fits_and_upsamples_exactly_sized_images():
    from nerf_mapping.rendering.budget import RenderCost, budget_size, upsample_render

    cost = RenderCost()
    assert cost.seconds_per_ray is None and budget_size(320, 240, None, 1.0) == (320, 240)  # nothing measured
    cost.update(2.0, 1000)
    cost.update(4.0, 1000)  # the newest render weighs half
    assert math.isclose(cost.seconds_per_ray, 3e-3)
    cost.update(float("nan"), 10)  # a broken timing is ignored
    assert math.isclose(cost.seconds_per_ray, 3e-3)
    assert budget_size(320, 240, 1e-6, 1.0) == (320, 240)  # fits: full size
    assert budget_size(320, 240, 1e-3, 0.0) == (320, 240)  # budget off
    w, h = budget_size(320, 240, 1e-4, 1.0)  # 7000 rays fit (0.7 safety)
    assert w * h <= 7000 and w * h > 0.9 * 7000 - 320 and abs(w / h - 4 / 3) < 0.02
    assert budget_size(320, 240, 1.0, 1.0)[0] == 32  # never below the minimum width
    # upsampling: requested size; a constant colour stays constant; depth takes a neighbour's value, never a mix
    out = {"rgb": torch.full((3, 4, 3), 0.25), "depth": torch.tensor([[1.0, 1.0, 5.0, 5.0]] * 3),
           "n_samples": torch.tensor(7)}
    up = upsample_render(out, 6, 8)
    assert up["rgb"].shape == (6, 8, 3) and torch.allclose(up["rgb"], torch.tensor(0.25))
    assert up["depth"].shape == (6, 8) and set(up["depth"].unique().tolist()) == {1.0, 5.0}
    assert int(up["n_samples"]) == 7


def test_training_rays_through_haze_reach_further_with_step_doubling():
    """An untrained field is a haze wherever the grid is occupied (all of it, before the first update): at a fixed
    step a ray spends its sample cap right in front of the camera; with ``train_fine_samples`` its step doubles
    after them and the same cap reaches several times further, while the first samples stay exactly as before."""
    from dataclasses import replace

    from nerf_mapping.fields.hash_encoding import HashEncodingConfig
    from nerf_mapping.fields.ngp_field import FieldConfig, NGPField
    from nerf_mapping.rendering.occupancy_grid import OccupancyGrid, OccupancyGridConfig
    from nerf_mapping.rendering.renderer import RenderConfig, early_stop_samples

    box = torch.tensor([[-4.0, -4.0, -4.0], [4.0, 4.0, 4.0]])
    field = NGPField(FieldConfig(encoding=HashEncodingConfig(n_levels=4, log2_hashmap_size=12, max_resolution=64)),
                     box, unbounded=False)
    grid = OccupancyGrid(OccupancyGridConfig(resolution=16), box.reshape(6), levels=1)
    origins = torch.tensor([[-3.5, 0.0, 0.0], [-3.5, 0.5, 0.2]])
    dirs = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.05, 0.0]]), dim=-1)
    base = replace(RenderConfig(step_size=0.01, cone_angle=0.0, max_samples_per_ray=128, samples_per_round=32,
                                early_stop_eps=1e-9), alpha_thre=0.0)
    reach = {}
    for fine in (None, 32):
        r, a, b, _ = early_stop_samples(field, grid, origins, dirs, 0.0, 20.0, replace(base, train_fine_samples=fine))
        reach[fine] = (b[r == 0].max().item(), a[r == 0][:32])
    assert math.isclose(reach[None][0], 128 * 0.01, rel_tol=1e-4)  # the cap at a fixed step: 1.28 units
    assert reach[32][0] > 3.5 * reach[None][0]  # (32 + 32x2 + 32x4 + 32x8) x 0.01 = 4.8 units for the same 128
    assert torch.equal(reach[None][1], reach[32][1])  # the fine samples are the same


def test_visibility_marks_what_a_camera_sees_per_block_a_tight_superset_of_the_per_cell_test():
    from nerf_mapping.cameras import Cameras, project
    from nerf_mapping.rendering.occupancy_grid import OccupancyGrid, OccupancyGridConfig

    grid = OccupancyGrid(OccupancyGridConfig(resolution=32, visibility=True), torch.tensor([-1.0, -1, -1, 1, 1, 1]),
                         levels=2)
    # a camera at x=-0.5 looking along +x (OpenGL: it looks down its -z axis)
    c2w = torch.tensor([[[0.0, 0, -1, -0.5], [-1, 0, 0, 0], [0, 1, 0, 0]]])
    cams = Cameras.create(c2w, 40.0, 40.0, 32.0, 24.0, 64, 48)
    assert not grid.occupied.any()
    n = grid.mark_visible(cams, far=10.0)
    assert n == int(grid.seen.sum()) > 0 and torch.equal(grid.seen, grid.occupied)
    # the per-cell reference: a cell is seen when its centre projects into the image (margin: the cell's radius)
    g = 32
    idx = torch.arange(g**3)
    ref = []
    for lvl in range(2):
        pts = grid.cell_centers(lvl, idx, jitter=False)
        rad = float(((grid.level_boxes()[lvl, 1] - grid.level_boxes()[lvl, 0]) / g).norm()) * 0.5
        p = (pts - c2w[0, :, 3]) @ c2w[0, :, :3]
        depth = -p[:, 2]
        u, v = project(cams, 0, p)
        m = 40.0 * rad / depth.clamp_min(1e-6)
        inside = (u > -m) & (u < 64 + m) & (v > -m) & (v < 48 + m) & (depth - rad < 10.0)
        ref.append((((depth > 0) & inside) | (p.norm(dim=-1) <= rad)).view(g, g, g))
    ref = torch.stack(ref)
    assert (grid.seen | ~ref).all()  # everything the cells show is marked
    assert int(grid.seen.sum()) <= 1.3 * int(ref.sum())  # and little more (the frustum's edge)
    assert not grid.seen[0, :6].any()  # behind the camera (x < -0.5, beyond its own block) nothing is seen
