"""Range supervision (nerf_mapping.training.range): the loss against its definition, carving of a known analytic
scene, depth edges, range rays in the frame store and through the trainer, and a short real training run where
depth lowers the depth error."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nerf_mapping.cameras import Cameras
from nerf_mapping.rendering.occupancy_grid import OccupancyGrid, OccupancyGridConfig
from nerf_mapping.training.frame_store import CameraRays, FrameStore
from nerf_mapping.training.range import (RangeConfig, RangeSupervision, depth_edge_mask, depth_to_range_rays,
                                         line_of_sight_loss, optical_to_model, sensor_sigma)


def test_line_of_sight_loss_matches_its_definition():
    # two rays, packed samples; ray 1 has no return (range 0) and must get no loss
    t0 = torch.tensor([0.0, 0.5, 1.0, 1.5, 0.0, 1.0])
    t1 = t0 + 0.5
    ri = torch.tensor([0, 0, 0, 0, 1, 1])
    w = torch.tensor([0.1, 0.2, 0.5, 0.1, 0.3, 0.3])
    z = torch.tensor([1.25, 0.0])
    s = torch.tensor([0.2, 0.2])
    free, term = line_of_sight_loss(w, t0, t1, ri, z, s, band_sigmas=2.0, eps=1e-4, max_ray_loss=5.0)
    # free space: samples ending at or before z - 2 sigma = 0.85: the first (ends 0.5); the second ends at 1.0 > 0.85
    assert float(free[0]) == pytest.approx(0.1)
    phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    k = [phi((b - 1.25) / 0.2) - phi((a - 1.25) / 0.2) for a, b in zip(t0[:4].tolist(), t1[:4].tolist())]
    ce = -sum(ki * math.log(wi + 1e-4) for ki, wi in zip(k, w[:4].tolist()))
    assert float(term[0]) == pytest.approx(5.0 * math.log1p(ce / 5.0), rel=1e-5)
    assert float(free[1]) == 0.0 and float(term[1]) == 0.0
    # a ray whose weight sits on its return scores lower than one that stops in front of it
    w_good = torch.tensor([0.0, 0.05, 0.9, 0.05])
    w_bad = torch.tensor([0.9, 0.05, 0.03, 0.02])
    f_g, c_g = line_of_sight_loss(w_good, t0[:4], t1[:4], ri[:4], z[:1], s[:1])
    f_b, c_b = line_of_sight_loss(w_bad, t0[:4], t1[:4], ri[:4], z[:1], s[:1])
    assert float(f_g[0]) < float(f_b[0]) and float(c_g[0]) < float(c_b[0])


def test_termination_gradient_never_vanishes():
    # a ray with almost no weight at its return (an untrained field) must still be pulled towards it
    t0 = torch.arange(0, 2, 0.1)
    t1 = t0 + 0.1
    ri = torch.zeros_like(t0, dtype=torch.long)
    w = torch.full_like(t0, 1e-6, requires_grad=True)
    _, ce = line_of_sight_loss(w, t0, t1, ri, torch.tensor([1.0]), torch.tensor([0.05]))
    ce.sum().backward()
    g = w.grad
    assert float(g[10]) < 0 and float(g.abs().max()) > 0  # pushes the weight at the return up


def test_depth_pixels_are_supervised_at_their_ray_distance():
    """A depth camera measures z along the optical axis; the loss's target is the distance along each pixel's ray
    (z / cos of its angle to the axis): an off-axis ray whose weight sits at that distance scores well below one
    whose weight sits at z or at z * cos."""
    from types import SimpleNamespace

    dirs_cam = torch.tensor([[0.0, 0.0, -1.0], [0.6, 0.0, -0.8]])  # on the axis; 36.9 degrees off it
    depth = torch.tensor([2.0, 2.4])  # z-depth: the off-axis ray meets the surface 3.0 along itself
    t0 = torch.arange(0.0, 4.0, 0.02)
    n = t0.numel()

    def masses(mu: float, sigma: float) -> torch.Tensor:  # a ray whose weight is the sensor's noise about mu
        cdf = lambda t: 0.5 * (1 + torch.erf((t - mu) / (sigma * math.sqrt(2))))  # noqa: E731
        return cdf(t0 + 0.02) - cdf(t0)

    def loss_with_weight_at(t_ray1: float) -> float:
        w = torch.cat([masses(2.0, 0.05), masses(t_ray1, 0.05)])
        out = {"weights": w, "t_starts": torch.cat([t0, t0]), "t_ends": torch.cat([t0, t0]) + 0.02,
               "ray_indices": torch.arange(2).repeat_interleave(n)}
        batch = SimpleNamespace(depth=depth, dirs_cam=dirs_cam, range_rays=None, range_out=None)
        return float(RangeSupervision(RangeConfig()).loss(torch.zeros(2, dtype=torch.long), out, batch))

    right, at_z, at_z_cos = loss_with_weight_at(3.0), loss_with_weight_at(2.4), loss_with_weight_at(2.4 * 0.8)
    assert right < 0.5 * at_z and right < 0.5 * at_z_cos, (right, at_z, at_z_cos)


def test_sensor_sigma_models():
    cfg = RangeConfig(sigma0_m=0.005, sigma_quadratic=0.0025, lidar_sigma_m=0.02)
    z = torch.tensor([1.0, 3.0, 3.0])
    s = sensor_sigma(z, cfg, 1.0, lidar=torch.tensor([False, False, True]))
    assert s.tolist() == pytest.approx([0.0075, 0.0275, 0.02])
    # a scene in half-metre units: the same noise is twice as many units
    s2 = sensor_sigma(z * 2, cfg, 0.5)
    assert s2[0].item() == pytest.approx(0.015)


def _box_grid(res=32, visibility=False):
    cfg = OccupancyGridConfig(resolution=res, visibility=visibility)
    return OccupancyGrid(cfg, torch.tensor([-2.0, -2.0, -2.0, 2.0, 2.0, 2.0]), levels=1)


def test_carving_a_known_scene():
    # a wall at x = 1.5 seen by rays from the origin: cells in front are free, cells at the wall hit, behind untouched
    g = _box_grid()
    n = 400
    yz = torch.rand(n, 2) * 1.6 - 0.8
    dirs = torch.cat([torch.ones(n, 1), yz / 1.5], 1)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    ranges = 1.5 / dirs[:, 0]
    n_free, n_hit = g.carve(torch.zeros(n, 3), dirs, ranges, margin_cells=1.5)
    assert n_free > 0 and n_hit > 0
    cell = 4.0 / 32
    centres = lambda xs: torch.stack([torch.tensor(xs), torch.zeros(len(xs)), torch.zeros(len(xs))], -1)  # noqa: E731
    lvl, flat, _ = g._cells(centres([0.3, 0.8, 1.5, 1.9]), g.level_boxes())
    occ = g.occupied.view(1, -1)[lvl, flat].tolist()
    free = g.free.view(1, -1)[lvl, flat].tolist()
    hit = g.hit.view(1, -1)[lvl, flat].tolist()
    assert free[:2] == [True, True] and occ[:2] == [False, False]  # carved free space is never occupied
    assert hit[2] and occ[2]  # the wall's cell holds returns and is occupied
    assert not free[3] and not hit[3] and occ[3]  # behind the wall: unknown, left to the density
    # the margin: no cell that starts within 1.5 cells in front of the wall is carved
    lvl, flat, _ = g._cells(centres([1.5 - 0.4 * cell]), g.level_boxes())
    assert not bool(g.free.view(1, -1)[lvl, flat][0])
    # density updates keep the range evidence: carved cells stay empty even where the density says otherwise
    g.update(lambda x: torch.full((x.shape[0],), 100.0), step_size=0.01)
    assert not bool(g.occupied.view(1, -1)[lvl[:0], flat[:0]].any())
    lvl, flat, _ = g._cells(centres([0.3]), g.level_boxes())
    assert not bool(g.occupied.view(1, -1)[lvl, flat][0])


def test_visibility_stops_at_returns():
    # a camera at the origin looking down -z (OpenGL) at a wall 1 m away: cells behind the wall are not seen
    g = _box_grid(res=32, visibility=True)
    c2w = torch.eye(4)[:3]
    cam = Cameras.create(c2w, 20.0, 20.0, 16.0, 16.0, 32, 32)
    depth = torch.full((32, 32), 1.0)
    g.mark_visible(cam, far=10.0, depths=[depth])
    p = lambda z: torch.tensor([[0.0, 0.0, z]])  # noqa: E731
    seen = lambda z: bool(g.seen.view(1, -1)[g._cells(p(z), g.level_boxes())[:2]][0])  # noqa: E731
    assert seen(-0.5) and seen(-1.0) and not seen(-1.9)
    g2 = _box_grid(res=32, visibility=True)
    g2.mark_visible(cam, far=10.0)  # without depth: everything in view
    assert bool(g2.seen.view(1, -1)[g2._cells(p(-1.9), g2.level_boxes())[:2]][0])


def test_depth_edge_mask():
    d = torch.full((10, 10), 2.0)
    d[:, 5:] = 3.0  # a depth edge between columns 4 and 5
    d[0, 0] = 0.0  # a hole
    m = depth_edge_mask(d, rel_jump=0.05)
    assert not m[5, 4] and not m[5, 5]  # both sides of the edge
    assert m[5, 2] and m[5, 8]
    assert not m[0, 0] and not m[1, 1]  # the hole and its neighbour


def test_depth_to_range_rays_round_trip():
    depth = torch.zeros(4, 6)
    depth[1, 2] = 2.0
    rays = depth_to_range_rays(depth, fx=10.0, fy=10.0, cx=3.0, cy=2.0)
    assert len(rays) == 1
    p = rays.origins + rays.directions * rays.ranges[:, None]
    # pixel (2.5, 1.5) -> optical ((2.5-3)/10*2, (1.5-2)/10*2, 2) -> model axes (x, -y, -z)
    assert p[0].tolist() == pytest.approx([-0.1, 0.1, -2.0], abs=1e-6)
    assert optical_to_model(torch.tensor([[1.0, 2.0, 3.0]])).tolist() == [[1.0, -2.0, -3.0]]


def test_frame_store_range_rays_and_partial_depth():
    fs = FrameStore(seed=0)
    cam = Cameras.create(torch.eye(4)[:3], 10.0, 10.0, 4.0, 4.0, 8, 8)
    img = torch.zeros(8, 8, 3, dtype=torch.uint8)
    fs.add(img, cam)  # no depth
    rays = CameraRays.from_points(torch.zeros(5, 3), torch.tensor([[0.0, 0.0, -float(i + 1)] for i in range(5)]))
    f1 = fs.add(img, cam, depth=torch.full((8, 8), 2.0), ranges=rays)
    assert fs.has_range and fs.has_range_rays
    batch, cams, slot = fs.sample(64, n_range=32)
    assert batch.depth is not None
    # pixels of the frame without depth read 0 (no supervision), the other's read 2
    assert set(batch.depth.unique().tolist()) <= {0.0, 2.0}
    rr = batch.range_rays
    assert rr is not None and len(rr) == 32 and (rr.frame_ids == f1).all()
    assert torch.equal(cams.c2w[rr.slot], cams.c2w[torch.full((32,), 1)])
    o, d, r = fs.range_rays_world(f1, 1000)
    assert len(r) == 64 + 5
    with pytest.raises(ValueError):
        fs.add(img, cam, depth=torch.zeros(4, 4))  # not on the image's grid


def test_trainer_renders_lidar_rays_and_applies_the_loss():
    from nerf_mapping.training.trainer import SceneSpec, Trainer, TrainerConfig

    cfg = TrainerConfig(init_rays_per_step=64)
    cfg.grid.resolution = 16
    scene = SceneSpec(scene_box=[[-2, -2, -2], [2, 2, 2]], unbounded=False, near=0.05, far=6.0)
    fs = FrameStore(seed=0)
    cam = Cameras.create(torch.eye(4)[:3], 10.0, 10.0, 4.0, 4.0, 8, 8)
    pts = torch.tensor([[0.0, 0.0, -1.5], [0.3, 0.0, -1.5], [0.0, 0.3, -1.5]])
    fs.add(torch.full((8, 8, 3), 128, dtype=torch.uint8), cam,
           ranges=CameraRays.from_points(torch.zeros(3, 3), pts))
    tr = Trainer(cfg, scene, fs)
    st = tr.step()
    assert st["range_lidar_rays"] > 0 and "range_termination" in st
    assert tr.grid.hit.any() and tr.grid.free.any()  # the frame was carved before its first step
    cfg2 = TrainerConfig(init_rays_per_step=64)
    cfg2.grid.resolution = 16
    cfg2.range.enabled = False
    st2 = Trainer(cfg2, scene, fs).step()
    assert not any(k.startswith("range_") for k in st2)


@pytest.mark.skipif(not (__import__("pathlib").Path(__file__).parents[2] / "shared/data/7scenes_redkitchen_rgbd")
                    .is_dir(), reason="../shared/data/7scenes_redkitchen_rgbd not present")
def test_real_depth_lowers_the_depth_error():
    """A short real run on the Kinect capture (depth with holes, colour not registered to depth): with its depth the
    rendered depth of held-out frames is much closer to the sensor's than without."""
    from pathlib import Path

    from nerf_mapping.config.presets import offline_config
    from nerf_mapping.data import load_dataset
    from nerf_mapping.evaluation.images import evaluate
    from nerf_mapping.training.offline import build_trainer

    root = Path(__file__).parents[2] / "shared/data/7scenes_redkitchen_rgbd"
    train = load_dataset(root, split="train", downscale=8)
    test = load_dataset(root, split="test", downscale=8, max_frames=4)
    errs = {}
    for use_depth in (True, False):
        cfg = offline_config(train, seed=0)
        cfg.range.enabled = use_depth
        torch.manual_seed(0)
        tr = build_trainer(train, cfg)
        tr.train(max_steps=120, progress=False)
        with tr.fast_inference():
            errs[use_depth] = evaluate(tr.render, test, progress=False)["depth_abs_median_m"]
    assert errs[True] < 0.2, errs
    assert errs[True] < 0.5 * errs[False], errs


def test_range_input_matches_depth_and_lidar_to_a_keyframe():
    """The mapper's range intake without ROS: a depth image with the keyframe's stamp is resampled onto its grid
    (edges masked), one of another stamp or size is counted and not used; a LiDAR return placed through the static
    transform and the odometry lands where it is in the keyframe's camera frame."""
    from nerf_mapping.mapping.config import MapperConfig
    from nerf_mapping.mapping.mapper import OnlineMapper

    cfg = MapperConfig(scene_box=(-3, -3, -3, 3, 3, 3))
    cfg.training.enabled = False
    m = OnlineMapper(cfg)
    ri, it = m.range_input, m.intake
    ri.expect_depth = True
    it.camera_frame = "cam"
    T_base_cam = np.eye(4)
    T_base_cam[:3, :3] = [[0, 0, 1], [-1, 0, 0], [0, -1, 0]]  # optical axes looking along base +x
    it.add_static_transform("base_link", "cam", T_base_cam)
    T_base_lidar = np.eye(4)
    T_base_lidar[2, 3] = 0.2
    it.add_static_transform("base_link", "lidar", T_base_lidar)
    t0 = 1_000_000_000
    for k in range(11):  # the body moves along x at 1 m/s
        T = np.eye(4)
        T[0, 3] = 0.1 * k
        it.add_odometry(t0 + k * 100_000_000, "odom", T)
    depth = np.full((48, 64), 2.0, np.float32)
    depth[:, 40:] = 3.0  # an edge
    assert ri.add_depth(t0 + 500_000_000, "cam", depth)
    assert not ri.add_depth(t0, "cam", np.zeros((4, 4), np.float32))  # no valid pixel: counted
    # a LiDAR return 2 m ahead of the body and level with the camera, taken 0.05 s after the scan stamp
    ri.add_points(t0 + 450_000_000, "lidar", np.array([[2.0, 0.0, -0.2]], np.float32), np.array([0.05]))
    T_odom_cam = np.eye(4)
    T_odom_cam[0, 3] = 0.5
    T_odom_cam = T_odom_cam @ T_base_cam
    d, rays = ri.for_keyframe(t0 + 500_000_000, T_odom_cam, (64, 48), 2)
    assert d.shape == (24, 32)
    assert float(d[10, 5]) == pytest.approx(2.0) and float(d[10, 28]) == pytest.approx(3.0)
    assert float(d[10, 19]) == 0.0  # the edge (columns 39 | 40 at 64 px; keyframe column 19 samples 39) is masked
    assert rays is not None and len(rays) == 1
    p = rays.origins + rays.directions * rays.ranges[:, None]
    # body at x = 0.5 at the return's time -> the point is 2 m ahead of it: camera (model axes) z = -2
    assert p[0].tolist() == pytest.approx([0.0, 0.0, -2.0], abs=1e-4)
    assert rays.origins[0].tolist() == pytest.approx([0.0, 0.2, 0.0], abs=1e-4)  # the LiDAR 0.2 m above
    d2, _ = ri.for_keyframe(t0 + 900_000_000, T_odom_cam, (64, 48), 2)  # no depth at that stamp
    assert d2 is None and it.counts["depth_unmatched"] == 1 and it.counts["depth_empty"] == 1
    ri.add_depth(t0 + 950_000_000, "cam", np.ones((10, 10), np.float32))  # not the colour camera's aspect ratio
    d3, _ = ri.for_keyframe(t0 + 950_000_000, T_odom_cam, (64, 48), 2)
    assert d3 is None and it.counts["depth_size_mismatch"] == 1
