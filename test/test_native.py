"""Native CPU kernels vs their pure-PyTorch references (hash encoding, occupancy-grid ray marching)."""

from __future__ import annotations

import math

import pytest
import torch

from nerf_mapping import native
from nerf_mapping.fields.hash_encoding import (
    HashEncoding,
    HashEncodingConfig,
    dense_level_mask,
    hash_encode_native,
    hash_encode_torch,
    level_resolutions,
)
from nerf_mapping.rendering.marching import march_rays, march_rays_native, march_rays_torch

_NATIVE = native.load()
needs_native = pytest.mark.skipif(_NATIVE is None, reason=f"native extension could not be built: {native.error()}")

SMALL = HashEncodingConfig(n_levels=4, n_features_per_level=2, log2_hashmap_size=10, base_resolution=2,
                           max_resolution=64)  # levels [2, 6, 20, 64]: 2 dense, 2 hashed


def _setup(cfg: HashEncodingConfig, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    res = torch.tensor(level_resolutions(cfg))
    T = 2**cfg.log2_hashmap_size
    table = (torch.rand(cfg.n_levels, T, cfg.n_features_per_level, generator=g) * 2 - 1).requires_grad_(True)
    return res, dense_level_mask(res, T), table, g


def _points(n: int, g: torch.Generator, res: torch.Tensor) -> torch.Tensor:
    x = torch.rand(n, 3, generator=g) * 1.2 - 0.1  # ~45% of points have a coordinate outside [0, 1]
    # points exactly on cell boundaries of several levels and on the cube faces / corners
    k = min(n // 4, 64)
    r = res[torch.randint(len(res), (k,), generator=g)].float()
    x[:k] = torch.floor(torch.rand(k, 3, generator=g) * r[:, None]) / r[:, None]
    x[k:k + 4] = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.5], [1.0, 0.25, 0.0]])
    return x


# ------------------------------------------------------------------------------------------------ hash encoding


def test_level_resolutions():
    r = level_resolutions(HashEncodingConfig())
    assert len(r) == 16 and r[0] == 16 and r[-1] == 2048
    assert all(b >= a for a, b in zip(r, r[1:]))
    assert level_resolutions(HashEncodingConfig(n_levels=1)) == [16]


def _naive_encode(x, table, res, dense):
    """Per-point loop straight from the definition (independent check of the reference)."""
    L, T, F = table.shape
    out = torch.zeros(x.shape[0], L * F, dtype=table.dtype)
    for n in range(x.shape[0]):
        for lvl in range(L):
            R = int(res[lvl])
            p = [min(max(float(v), 0.0), 1.0) * R for v in x[n]]
            i0 = [min(max(int(math.floor(v)), 0), R - 1) for v in p]
            f = [p[d] - i0[d] for d in range(3)]
            for c in range(8):
                b = [(c >> d) & 1 for d in range(3)]
                v = [i0[d] + b[d] for d in range(3)]
                if dense[lvl]:
                    idx = v[0] + v[1] * (R + 1) + v[2] * (R + 1) ** 2
                else:
                    idx = ((v[0] ^ (v[1] * 2654435761) ^ (v[2] * 805459861)) & 0xFFFFFFFF) % T
                w = math.prod(f[d] if b[d] else 1 - f[d] for d in range(3))
                out[n, lvl * F:(lvl + 1) * F] += w * table[lvl, idx]
    return out


def test_torch_reference_matches_definition():
    res, dense, table, g = _setup(SMALL)
    x = _points(40, g, res)
    ref = _naive_encode(x, table.detach().double(), res, dense.tolist())
    out = hash_encode_torch(x.double(), table.detach().double(), res, dense)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_torch_reference_gradcheck():
    res, dense, table, g = _setup(SMALL)
    x = (torch.rand(12, 3, generator=g, dtype=torch.float64) * 0.9 + 0.05).requires_grad_(True)
    tab = table.detach().double()[:, :, :].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: hash_encode_torch(a, b, res, dense), (x, tab), eps=1e-7, atol=1e-5)


def _compare(cfg, n, seed=0, level_weights=None):
    res, dense, table, g = _setup(cfg, seed)
    x = _points(n, g, res)
    xt = x.clone().requires_grad_(True)
    xn = x.clone().requires_grad_(True)
    out_t = hash_encode_torch(xt, table, res, dense)
    out_n = hash_encode_native(xn, table, res, dense)
    torch.testing.assert_close(out_n, out_t, rtol=1e-5, atol=1e-5)
    go = torch.randn(out_t.shape, generator=g)
    gx_t, gt_t = torch.autograd.grad(out_t, (xt, table), go)
    gx_n, gt_n = torch.autograd.grad(out_n, (xn, table), go)
    scale = gt_t.abs().max()
    torch.testing.assert_close(gt_n, gt_t, rtol=1e-5, atol=1e-5 * float(scale))
    torch.testing.assert_close(gx_n, gx_t, rtol=1e-4, atol=1e-4 * float(gx_t.abs().max()))
    outside = (x < 0) | (x > 1)
    assert outside.any() and (gx_n[outside] == 0).all()


@needs_native
@pytest.mark.parametrize("cfg", [SMALL, HashEncodingConfig(n_levels=6, n_features_per_level=4, log2_hashmap_size=12,
                                                           base_resolution=4, max_resolution=300)],
                         ids=["small", "f4"])
def test_native_matches_torch_small(cfg):
    _compare(cfg, 3000)


@needs_native
def test_native_matches_torch_default():
    cfg = HashEncodingConfig()
    res, dense, _, _ = _setup(cfg)
    assert dense.any() and not dense.all()
    _compare(cfg, 2000, seed=1)


@needs_native
def test_native_only_computes_requested_grads():
    res, dense, table, g = _setup(SMALL)
    x = torch.rand(100, 3, generator=g)
    out = hash_encode_native(x, table, res, dense)
    (gt,) = torch.autograd.grad(out.sum(), (table,))
    gx, gt2 = _NATIVE.hash_encode_backward(torch.ones(100, 8), x, table.detach(), res, dense, False, False, None)
    assert gx is None and gt2 is None
    # x-only gradient (frozen table, pose refinement)
    xr = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(hash_encode_native(xr, table.detach(), res, dense).sum(), (xr,))
    assert gx.shape == (100, 3) and torch.isfinite(gx).all()


@needs_native
def test_native_grad_buffer_pool_is_safe():
    """The pooled gradient buffer must never overwrite a gradient that is still referenced."""
    enc = HashEncoding(HashEncodingConfig(n_levels=4, log2_hashmap_size=12, base_resolution=4, max_resolution=64,
                                          impl="native"))
    ref = HashEncoding(HashEncodingConfig(n_levels=4, log2_hashmap_size=12, base_resolution=4, max_resolution=64,
                                          impl="torch"))
    ref.load_state_dict(enc.state_dict())
    g = torch.Generator().manual_seed(3)
    kept = []
    for step in range(3):
        x = torch.rand(500, 3, generator=g)
        enc(x).square().sum().backward()
        ref(x).square().sum().backward()
        torch.testing.assert_close(enc.table.grad, ref.table.grad, rtol=1e-5, atol=1e-6)
        kept.append((enc.table.grad, enc.table.grad.clone()))
        enc.table.grad = None  # like zero_grad(set_to_none=True), but we still hold the tensor
        ref.table.grad = None
    for held, copy in kept:
        assert torch.equal(held, copy)
    # accumulation across two backward calls without zeroing
    x = torch.rand(300, 3, generator=g)
    enc(x).sum().backward()
    enc(x).sum().backward()
    ref(x).sum().backward()
    torch.testing.assert_close(enc.table.grad, 2 * ref.table.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", ["torch", pytest.param("native", marks=needs_native)])
def test_module_level_weights_and_shapes(impl):
    cfg = HashEncodingConfig(n_levels=4, log2_hashmap_size=12, base_resolution=4, max_resolution=64, impl=impl)
    enc = HashEncoding(cfg)
    assert enc.impl == impl and enc.n_output_dims == 8
    assert enc.table.shape == (4, 4096, 2) and enc.table.abs().max() <= 1e-4
    with torch.no_grad():
        enc.table.uniform_(-1, 1)
    x = torch.rand(2, 5, 3)
    base = enc(x)
    assert base.shape == (2, 5, 8)
    w = torch.tensor([0.0, 0.5, 1.0, 2.0])
    enc.set_level_weights(w)
    torch.testing.assert_close(enc(x), base * w.repeat_interleave(2))
    enc.set_level_weights(None)
    torch.testing.assert_close(enc(x), base)
    enc.set_level_weights(torch.tensor([0.0, 0.0, 1.0, 1.0]))
    enc(x).sum().backward()
    assert (enc.table.grad[:2] == 0).all() and (enc.table.grad[2:] != 0).any()


# ------------------------------------------------------------------------------------------------ marching


def _rays(R, g, scale=2.0):
    o = torch.randn(R, 3, generator=g) * scale
    d = torch.nn.functional.normalize(torch.randn(R, 3, generator=g), dim=-1)
    d[:8, 1:] = 0.0  # axis-parallel
    d[8:16, 0] = 0.0
    o[16:20] = torch.tensor([0.1, 0.2, 0.05])  # origin inside the grid
    tmin = torch.rand(R, generator=g) * 0.5
    tmax = tmin + torch.rand(R, generator=g) * 8
    tmax[20:24] = tmin[20:24]  # zero-length range
    tmax[24:28] = tmin[24:28] - 1  # inverted range
    o[28:32] = torch.tensor([50.0, 50.0, 50.0])  # far away: these miss
    return o, d, tmin, tmax


@needs_native
@pytest.mark.parametrize("L,G,p_occ,cone", [(1, 8, 0.1, 0.0), (2, 16, 0.3, 0.0), (3, 32, 0.05, 0.0), (2, 12, 0.5, 0.02),
                                            (4, 16, 0.02, 0.01), (1, 5, 1.0, 0.004)])
def test_march_native_equals_torch(L, G, p_occ, cone):
    g = torch.Generator().manual_seed(L * 100 + G)
    occ = torch.rand(L, G, G, G, generator=g) < p_occ
    aabb = torch.tensor([-1.0, -0.5, -1.0, 1.0, 1.5, 1.0])
    o, d, tmin, tmax = _rays(300, g)
    for max_s in (1024, 7):
        a = march_rays_torch(o, d, tmin, tmax, occ, aabb, 0.01, cone, max_s)
        b = march_rays_native(o, d, tmin, tmax, occ, aabb, 0.01, cone, max_s)
        for u, v in zip(a, b):
            assert u.dtype == v.dtype
            assert torch.equal(u, v)
        assert (torch.bincount(b[0], minlength=300) <= max_s).all()
        assert ((b[2] - b[1]) > 0).all()


def test_march_torch_semantics():
    """Hand-checkable case: one level, a single occupied cell, axis-aligned ray."""
    occ = torch.zeros(1, 4, 4, 4, dtype=torch.bool)
    occ[0, 2, 1, 1] = True  # x in [0, 0.5], y, z in [-0.5, 0]
    aabb = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
    o = torch.tensor([[-3.0, -0.25, -0.25], [-3.0, 0.75, 0.75]])
    d = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    ri, ts, te = march_rays(o, d, torch.zeros(2), torch.full((2,), 10.0), occ, aabb, 0.1, impl="torch")
    assert (ri == 0).all()
    mids = (ts + te) / 2 - 3.0  # x of the midpoints
    assert mids.min() > 0 and mids.max() < 0.5 and len(ri) == 5
    torch.testing.assert_close(ts[0], torch.tensor(3.0), atol=1e-6, rtol=0)  # entry at x=-1 (t=2) + 10 steps
    # sorted by ray then t
    assert (ts[1:] > ts[:-1]).all()
    assert torch.allclose(te - ts, torch.full_like(ts, 0.1))


@needs_native
def test_march_native_skips_and_is_consistent_on_large_grid():
    g = torch.Generator().manual_seed(7)
    occ = torch.zeros(2, 64, 64, 64, dtype=torch.bool)
    occ[0, 20:40, 20:40, 20:40] = torch.rand(20, 20, 20, generator=g) < 0.5
    occ[1, 5:10, 50:60, 30:40] = True
    aabb = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    o, d, tmin, tmax = _rays(500, g, scale=1.0)
    a = march_rays_torch(o, d, tmin, tmax, occ, aabb, 1.0 / 256)
    b = march_rays(o, d, tmin, tmax, occ, aabb, 1.0 / 256)  # auto -> native
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    assert a[0].numel() > 0


# -- fused field inference -------------------------------------------------------------------------------------------
@needs_native
@pytest.mark.parametrize("unbounded,appearance_dim,features", [(False, 0, 2), (True, 8, 2), (False, 4, 4)])
def test_fused_field_inference_matches_the_torch_field(unbounded, appearance_dim, features):
    """NGPField.infer through the fused native kernel == NGPField.density / .color in torch (weights, contraction,
    SH, shared appearance folded into a bias, coarse-to-fine level weights)."""
    from nerf_mapping.fields.ngp_field import FieldConfig, NGPField

    torch.manual_seed(0)
    enc = HashEncodingConfig(n_levels=8, n_features_per_level=features, log2_hashmap_size=14, max_resolution=256)
    f = NGPField(FieldConfig(encoding=enc, appearance_dim=appearance_dim), torch.tensor([[-1.0, -2, 0], [1, 2, 3]]),
                 unbounded)
    with torch.no_grad():
        f.encoding.table.normal_(0, 0.3)
        for p in list(f.density_mlp.parameters()) + list(f.color_mlp.parameters()):
            p.normal_(0, 0.2)
    f.encoding.set_level_weights(torch.linspace(1.0, 0.2, 8))
    x = torch.randn(5000, 3) * 2 + torch.tensor([0.0, 0.0, 1.5])
    d = torch.nn.functional.normalize(torch.randn(5000, 3), dim=-1)
    a = torch.randn(appearance_dim) if appearance_dim else None
    assert f._fused_module(a) is not None
    s1, r1, g1 = f.infer(x, d, a, want_geo=True)
    rgb_only = f.infer_color(g1, d, a)
    f.encoding.impl = "torch"
    assert f._fused_module(a) is None
    s2, r2, g2 = f.infer(x, d, a, want_geo=True)
    assert torch.allclose(s1, s2, rtol=2e-3, atol=1e-5)
    assert torch.allclose(g1, g2, atol=2e-3) and torch.allclose(r1, r2, atol=1e-3)
    assert torch.allclose(rgb_only, r1, atol=1e-5)
    if not unbounded:  # a bounded field is empty outside its box
        outside = ~((x >= f.scene_box[0]) & (x <= f.scene_box[1])).all(-1)
        assert bool(outside.any()) and bool((s1[outside] == 0).all())


@needs_native
def test_inference_render_is_bounded_on_an_untrained_field():
    """An untrained field is a uniform fog where every cell is occupied and no ray ever becomes opaque: the inference
    renderer still spends a bounded number of samples per ray (fine samples, then a step doubling each round) and
    equals the training path where both march the same samples."""
    from dataclasses import replace

    from nerf_mapping.fields.ngp_field import FieldConfig, NGPField
    from nerf_mapping.rendering.occupancy_grid import OccupancyGrid, OccupancyGridConfig
    from nerf_mapping.rendering.renderer import RenderConfig, render_rays, render_rays_inference

    torch.manual_seed(0)
    box = torch.tensor([[-1.5, -1.5, -1.5], [1.5, 1.5, 1.5]])
    field = NGPField(FieldConfig(encoding=HashEncodingConfig(n_levels=8, log2_hashmap_size=14)), box, False)
    grid = OccupancyGrid(OccupancyGridConfig(resolution=32), box.reshape(6), levels=1)
    cfg = RenderConfig(max_samples_per_ray=1024).resolved(box, False)  # step = diagonal / 1000
    o = torch.tensor([0.0, 0.0, 4.0]).expand(2000, 3).contiguous()
    d = torch.nn.functional.normalize(torch.randn(2000, 3) * 0.2 + torch.tensor([0.0, 0.0, -1.0]), dim=-1)
    out = render_rays_inference(field, grid, o, d, 2.0, 6.0, cfg, torch.ones(3))
    per_ray = int(out["n_samples"]) / 2000
    k, fine = cfg.inference_samples_per_round, cfg.inference_fine_samples
    # ~1000 steps through the box: 64 fine samples, then rounds of 16 at 2, 4, 8, 16, 32x the step
    assert per_ray <= fine + 6 * k, per_ray
    ref = render_rays(field, grid, o, d, 2.0, 6.0, cfg, torch.ones(3))
    assert int(ref["n_marched"]) / 2000 > 3 * per_ray  # the training path marches every step
    exact = render_rays_inference(field, grid, o, d, 2.0, 6.0, replace(cfg, inference_fine_samples=10**6,
                                                                         color_weight_thre=0.0), torch.ones(3))
    with torch.no_grad():
        assert torch.allclose(exact["rgb"], ref["rgb"], atol=1e-4)
        assert torch.allclose(exact["opacity"], ref["opacity"], atol=1e-4)
        # the coarse tail integrates the same fog: opacity within a few percent
        assert float((out["opacity"] - ref["opacity"]).abs().max()) < 0.05


def test_build_lock_clears_the_baton_of_a_killed_build(tmp_path):
    """torch's build baton (``<build_dir>/lock``) left by a killed build would make every later process wait forever;
    under our OS file lock (released when its holder dies) a leftover baton is known stale and removed."""
    from nerf_mapping.native import _build_lock

    (tmp_path / "lock").write_text("")
    with _build_lock(tmp_path):
        assert not (tmp_path / "lock").exists()


@needs_native
@pytest.mark.parametrize("unbounded", [False, True])
def test_native_render_loop_equals_the_torch_loop(unbounded):
    """``render_rays_inference`` runs its whole marching loop in one native call (``render_inference``) when it can;
    the torch loop is the reference. Same samples, same early stops, same colour skipping: images equal within float
    tolerance, on a field with structure (random weights), a partly empty grid (empty-space skipping), coarse-to-fine
    level weights, a shared appearance embedding, alpha_thre and rays that double their step."""
    from dataclasses import replace

    from nerf_mapping.fields.ngp_field import FieldConfig, NGPField
    from nerf_mapping.rendering.occupancy_grid import OccupancyGrid, OccupancyGridConfig
    from nerf_mapping.rendering.compositing import median_sample
    from nerf_mapping.rendering.renderer import RenderConfig, render_rays_inference

    torch.manual_seed(1)
    box = torch.tensor([[-1.5, -1.5, -1.5], [1.5, 1.5, 1.5]])
    field = NGPField(FieldConfig(encoding=HashEncodingConfig(n_levels=8, log2_hashmap_size=14), appearance_dim=4),
                     box, unbounded)
    with torch.no_grad():
        field.encoding.table.normal_(0, 0.5)
        for p in list(field.density_mlp.parameters()) + list(field.color_mlp.parameters()):
            p.normal_(0, 0.3)
    field.encoding.set_level_weights(torch.linspace(1.0, 0.3, 8))
    grid = OccupancyGrid(OccupancyGridConfig(resolution=32), box.reshape(6), levels=2 if unbounded else 1)
    grid.occupied.copy_(torch.rand(grid.occupied.shape) < 0.6)
    cfg = RenderConfig(max_samples_per_ray=200, inference_fine_samples=24,
                       alpha_thre=0.01 if unbounded else 0.0).resolved(box, unbounded)
    o = torch.tensor([0.0, 0.0, 4.0]) + torch.randn(3000, 3) * 0.1
    d = torch.nn.functional.normalize(torch.randn(3000, 3) * 0.3 + torch.tensor([0.0, 0.0, -1.0]), dim=-1)
    app = torch.randn(4)
    bg = torch.tensor([0.2, 0.5, 0.9])
    assert field.native_render_args(app) is not None  # so the default impl runs the native loop
    for c in (cfg, replace(cfg, early_stop_eps=1e-2, inference_samples_per_round=7)):
        nat = render_rays_inference(field, grid, o, d, 0.5, 8.0, c, bg, appearance=app, return_median=True)
        ref = render_rays_inference(field, grid, o, d, 0.5, 8.0, c, bg, appearance=app, impl="torch",
                                    return_median=True)
        assert int(ref["n_samples"]) > 20 * 3000  # the rays do march through the field
        assert abs(int(nat["n_samples"]) - int(ref["n_samples"])) <= 0.002 * int(ref["n_samples"])
        assert float((nat["rgb"] - ref["rgb"]).abs().max()) < 2e-3
        assert float((nat["rgb"] - ref["rgb"]).abs().mean()) < 1e-5
        assert float((nat["opacity"] - ref["opacity"]).abs().max()) < 2e-3
        hit = ref["opacity"] > 0.5
        assert float(((nat["depth"] - ref["depth"]).abs()[hit]).median()) < 1e-4
        # the median termination distance (mesh export, query candidates): the same sample on nearly every ray (a
        # cumulative weight at exactly half may round the other way)
        same = (nat["median_depth"] - ref["median_depth"]).abs() < 1e-5
        assert float(same.float().mean()) > 0.99 and bool((ref["median_depth"][hit] > 0).all())
        # the torch loop's median is the one of its packed samples (compositing.median_sample)
        smp = render_rays_inference(field, grid, o, d, 0.5, 8.0, c, bg, appearance=app, impl="torch",
                                    return_samples=True)
        w, ri = smp["weights"], smp["ray_indices"]
        first = median_sample(w, ri, len(o))
        i = int(torch.nonzero(hit)[0])
        assert float(ref["median_depth"][i]) == pytest.approx(float((smp["t_starts"] + smp["t_ends"])[first[i]] / 2))
    field.encoding.impl = "torch"  # no fused kernels: the native loop does not apply and the torch loop runs
    assert field.native_render_args(app) is None


def _python_ticks_while(fn) -> tuple[float, float]:
    """Pure-Python iterations per second of this thread while ``fn`` runs on another one, and alone."""
    import threading
    import time

    def spin(until):
        n = 0
        while until():
            n += 1
            sum(range(50))  # pure-Python work: needs the GIL
        return n

    errors = []

    def run():
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - reported below: a kernel that fails at once proves nothing
            errors.append(exc)

    t_end = time.perf_counter() + 0.2
    alone = spin(lambda: time.perf_counter() < t_end) / 0.2
    t = threading.Thread(target=run)
    t0 = time.perf_counter()
    t.start()
    n = spin(t.is_alive)
    t.join()
    assert not errors, errors
    return n / (time.perf_counter() - t0), alone


@needs_native
def test_native_kernels_release_the_gil():
    """A native render of a batch of rays takes up to a second, a field evaluation or a hash-encoding pass of a
    training step tens of milliseconds; the node's other Python threads (message callbacks, keyframe intake, the
    query candidates' renders, and training between its kernels) must keep running meanwhile. With the GIL held this
    thread would get the GIL only between kernels (its rate falls to ~0); without it, it only shares the 2 cores."""
    from nerf_mapping.fields.ngp_field import FieldConfig, NGPField
    from nerf_mapping.rendering.occupancy_grid import OccupancyGrid, OccupancyGridConfig
    from nerf_mapping.rendering.renderer import RenderConfig, render_rays_inference

    box = torch.tensor([[-1.5, -1.5, -1.5], [1.5, 1.5, 1.5]])
    field = NGPField(FieldConfig(encoding=HashEncodingConfig(n_levels=8, log2_hashmap_size=14)), box, False)
    grid = OccupancyGrid(OccupancyGridConfig(resolution=32), box.reshape(6), levels=1)
    cfg = RenderConfig(inference_fine_samples=400).resolved(box, False)  # an untrained fog: ~400 samples a ray
    o = torch.tensor([0.0, 0.0, 4.0]).expand(6000, 3).contiguous()
    d = torch.nn.functional.normalize(torch.randn(6000, 3) * 0.2 + torch.tensor([0.0, 0.0, -1.0]), dim=-1)
    assert field.native_render_args(None) is not None
    x = torch.rand(1_500_000, 3) * 3 - 1.5
    enc = field.encoding
    u = torch.rand(1_500_000, 3)
    grad = torch.ones(1_500_000, enc.n_output_dims)
    occ = torch.ones(1, 64, 64, 64, dtype=torch.bool)
    ro = torch.zeros(40_000, 3)
    rd = torch.nn.functional.normalize(torch.randn(40_000, 3), dim=-1)
    kernels = {
        "render_inference": lambda: render_rays_inference(field, grid, o, d, 2.0, 6.0, cfg, torch.ones(3)),
        "field_inference": lambda: field.infer(x, d[:1].expand(len(x), 3)),
        "hash_encode_forward": lambda: _NATIVE.hash_encode_forward(u, enc.table.detach(), enc.resolutions,
                                                                  enc.dense_mask),
        "hash_encode_backward": lambda: _NATIVE.hash_encode_backward(grad, u, enc.table.detach(), enc.resolutions,
                                                                    enc.dense_mask),
        "march_rays": lambda: march_rays_native(ro, rd, torch.zeros(40_000), torch.full((40_000,), 2.0), occ,
                                                box.reshape(6), 0.002),
    }
    for name, fn in kernels.items():
        during, alone = _python_ticks_while(fn)
        assert during > 0.1 * alone, (name, during, alone)
