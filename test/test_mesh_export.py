"""Mesh / point-cloud export (:mod:`nerf_mapping.export.mesh`), its scores (:mod:`nerf_mapping.evaluation.mesh`) and
the ``nerf-mapping export`` command, on a map trained on a generated demo scene and compared with its ground-truth
mesh; plus the distortion loss the room preset trains with."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from nerf_mapping.evaluation.mesh import mesh_scores, sample_surface, visible_mask
from nerf_mapping.export.mesh import MeshExportConfig, grid_size
from nerf_mapping.rendering.compositing import distortion_loss, marching_coordinate
from nerf_mapping.rendering.marching import march_rays


# ------------------------------------------------------------------------------------------------ pure functions
def test_distortion_loss_matches_the_double_sum():
    g = torch.Generator().manual_seed(0)
    counts = [5, 1, 0, 7]
    ray_idx = torch.cat([torch.full((c,), i) for i, c in enumerate(counts)])
    t0 = torch.cat([torch.sort(torch.rand(c, generator=g) * 3)[0] for c in counts])
    t1 = t0 + 0.01 + 0.05 * torch.rand(len(t0), generator=g)
    w = torch.rand(len(t0), generator=g) * 0.3
    got = distortion_loss(w, t0, t1, ray_idx, len(counts))
    m = (t0 + t1) / 2
    for r in range(len(counts)):
        s = ray_idx == r
        ww, mm, dd = w[s], m[s], (t1 - t0)[s]
        want = (ww[:, None] * ww[None] * (mm[:, None] - mm[None]).abs()).sum() + (ww ** 2 * dd).sum() / 3
        assert abs(float(got[r]) - float(want)) < 1e-5
    # a compact ray scores lower than the same weight spread out
    idx = torch.zeros(4, dtype=torch.long)
    tight = distortion_loss(torch.full((4,), 0.2), torch.tensor([1.0, 1.01, 1.02, 1.03]),
                            torch.tensor([1.01, 1.02, 1.03, 1.04]), idx, 1)
    spread = distortion_loss(torch.full((4,), 0.2), torch.tensor([0.5, 1.5, 2.5, 3.5]),
                             torch.tensor([0.51, 1.51, 2.51, 3.51]), idx, 1)
    assert float(spread) > 50 * float(tight)


def test_marching_coordinate_counts_the_marchers_steps():
    """Each sample of a cone-marched ray (steps growing with distance) is one unit long in the coordinate, near and
    far alike, so the distortion loss over it does not favour the camera's side; constant steps are t / step."""
    occ = torch.ones(4, 8, 8, 8, dtype=torch.bool)  # everything occupied: every step is a sample
    aabb = torch.tensor([-2.0, -2, -2, 2, 2, 2])
    o, d = torch.tensor([[-15.9, 0.1, 0.2]]), torch.tensor([[1.0, 0.0, 0.0]])
    step, cone = 0.01, 1.0 / 64
    _, t0, t1 = march_rays(o, d, torch.full((1,), 0.05), torch.full((1,), 30.0), occ, aabb, step, cone, 100000)
    assert len(t0) > 100 and float(t0[-1]) > 20 * step / cone  # both regimes, up to 20x the turning point
    length = marching_coordinate(t1[:-1].double(), step, cone) - marching_coordinate(t0[:-1].double(), step, cone)
    assert torch.allclose(length, torch.ones_like(length), atol=0.02), (float(length.min()), float(length.max()))
    assert float((t1 - t0)[-2] / (t1 - t0)[0]) > 10  # the metric steps, by contrast, grew
    t = torch.tensor([0.5, 1.0])
    assert torch.allclose(marching_coordinate(t, 0.25, 0.0), t / 0.25)


def test_config_validation():
    MeshExportConfig().validate()
    for bad in (dict(depth=0), dict(depth=13), dict(num_points=10), dict(min_opacity=0.0),
                dict(bounds=(0, 0, 0, 1, 1)), dict(bounds=(0, 0, 0, -1, 1, 1)), dict(bounds=(0, 0, 0, 1, math.nan, 1)),
                dict(target_triangles=-1), dict(density_quantile=1.0)):
        with pytest.raises(ValueError):
            MeshExportConfig(**bad).validate()
    assert grid_size(320, 240, 1200) == (40, 30)
    assert grid_size(320, 240, 10 ** 9) == (320, 240)


def _box_mesh(lo, hi):
    import open3d as o3d

    m = o3d.geometry.TriangleMesh.create_box(*(np.subtract(hi, lo)))
    m.translate(lo)
    return np.asarray(m.vertices), np.asarray(m.triangles)


def test_scores_of_identical_and_shifted_surfaces():
    v, f = _box_mesh((0, 0, 0), (1, 1, 1))
    a = sample_surface(v, f, 20000, seed=0)
    assert np.allclose(a, sample_surface(v, f, 20000, seed=0))  # seeded: repeatable
    on_faces = np.min(np.stack([np.abs(a), np.abs(a - 1)]), axis=0).min(axis=1)
    assert on_faces.max() < 1e-9
    same = mesh_scores((v, f), a, (v, f), sample_surface(v, f, 20000, seed=1), {"5cm": 0.05})
    assert same["chamfer"] < 1e-6 and same["fscore_5cm"] == 1.0
    v2 = v + np.array([0.2, 0, 0])
    shifted = mesh_scores((v2, f), a + np.array([0.2, 0, 0]), (v, f), a, {"5cm": 0.05})
    # the shifted cube's x faces are 0.2 off; its y and z faces lie in the true planes but overhang by 0.2
    assert 0.05 < shifted["chamfer"] < 0.2 and shifted["fscore_5cm"] < 0.9


def test_visible_mask_uses_the_depth_map():
    from nerf_mapping.cameras import Cameras

    # a camera at the origin looking down -z (OpenGL) at a wall z = -2; a point behind the wall is hidden
    cam = Cameras.create(torch.eye(4)[:3], 50.0, 50.0, 32.0, 24.0, 64, 48)
    depth = [torch.full((48, 64), 2.0)]
    pts = np.array([[0.0, 0.0, -2.0], [0.3, 0.2, -2.01], [0.0, 0.0, -3.0], [0.0, 0.0, 2.0], [5.0, 0.0, -2.0]])
    assert visible_mask(pts, cam, depth).tolist() == [True, True, False, False, False]


# ------------------------------------------------------------------------------------------------ a known field
class _ShellRoom(torch.nn.Module):
    """An analytic map: opaque 5 cm shells on the inside of a box's six faces, grey everywhere. Seen from inside,
    its surface is the box shrunk by 5 cm."""

    def __init__(self, lo, hi):
        super().__init__()
        self.lo, self.hi = torch.tensor(lo), torch.tensor(hi)

    def density(self, x):
        d = torch.minimum(x - self.lo, self.hi - x).min(dim=-1).values  # distance to the nearest face (< 0 outside)
        return torch.where(d < 0.05, 500.0, 0.0), torch.zeros(x.shape[0], 15)

    def color(self, geo, dirs, appearance=None):
        return torch.full((geo.shape[0], 3), 0.6)

    def infer(self, x, directions=None, appearance=None, want_geo=False):  # the renderers' inference entry
        sigma, geo = self.density(x)
        return sigma, (self.color(geo, directions) if directions is not None else None), (geo if want_geo else None)

    def infer_color(self, geo, dirs, appearance=None):
        return self.color(geo, dirs, appearance)

    def native_render_args(self, appearance=None):  # no native kernels for an analytic field: the torch loop renders
        return None


def _look_at(eye, target) -> np.ndarray:
    """OpenGL c2w (x right, y up, z backwards) at ``eye`` looking at ``target`` with world z up."""
    eye, target = np.asarray(eye, float), np.asarray(target, float)
    z = eye - target
    z /= np.linalg.norm(z)
    x = np.cross([0.0, 0.0, 1.0], z)
    x /= np.linalg.norm(x)
    return np.concatenate([np.stack([x, np.cross(z, x), z], 1), eye[:, None]], 1)


def test_export_of_a_known_field_recovers_its_surface(tmp_path):
    """The exporter alone (no training): rays from cameras inside an analytic room, median depth, normals, Poisson,
    crop. Its mesh must lie on the known surface within a few millimetres and cover it."""
    import open3d as o3d

    from nerf_mapping.cameras import Cameras
    from nerf_mapping.export.mesh import MapSnapshot, export_geometry
    from nerf_mapping.rendering.occupancy_grid import OccupancyGrid, OccupancyGridConfig
    from nerf_mapping.rendering.renderer import RenderConfig

    lo, hi = (-2.0, -1.5, 0.0), (2.0, 1.5, 2.5)
    box = torch.tensor([lo, hi])
    eyes, targets = [], []
    for k in range(12):  # a ring of cameras looking outwards, level, down and up
        a = 2 * math.pi * k / 12
        eye = (0.4 * math.cos(a), 0.4 * math.sin(a), 1.2)
        for dz in (0.0, -1.5, 1.5):
            eyes.append(eye)
            targets.append((eye[0] + math.cos(a), eye[1] + math.sin(a), eye[2] + dz))
    c2w = np.stack([_look_at(e, t) for e, t in zip(eyes, targets)])
    views = Cameras.create(c2w, 60.0, 60.0, 40.0, 30.0, 80, 60)
    snap = MapSnapshot(_ShellRoom(lo, hi), OccupancyGrid(OccupancyGridConfig(resolution=32), box.reshape(6), 1),
                       RenderConfig().resolved(box, False), 0.05, 10.0, views, {}, box.numpy().astype(float), False)
    res = export_geometry(snap, tmp_path / "room.ply", MeshExportConfig(depth=8, num_points=40000), "poisson")
    mesh = o3d.io.read_triangle_mesh(str(tmp_path / "room.ply"))
    assert len(mesh.triangles) == res.n_triangles > 1000 and mesh.has_vertex_colors()
    assert np.allclose(np.asarray(mesh.vertex_colors), 0.6, atol=0.02)
    inner = _box_mesh(np.add(lo, 0.05), np.subtract(hi, 0.05))
    ours = (np.asarray(mesh.vertices), np.asarray(mesh.triangles))
    s = mesh_scores(ours, sample_surface(*ours, 40000), inner, sample_surface(*inner, 40000, seed=1), {"2cm": 0.02})
    print(s)
    # measured: median 2.5 mm (the march step is 5.4 mm), precision@2cm 0.999, recall 0.90 (the cameras never see
    # the floor's and the ceiling's far corners; the trimmed Poisson surface leaves most of them out)
    assert s["accuracy_median"] < 0.005 and s["precision_2cm"] > 0.97 and s["recall_2cm"] > 0.8


# ------------------------------------------------------------------------------------------------ a trained map
# The demo room at its default size (150 frames, 320x240; 131 train) and 1300 training steps (about 90 s on 2 idle
# cores; steps rather than seconds, so that a loaded CI machine trains the same map). Measured (2026-12-06): 90 s
# runs of 1269 steps gave Chamfer / diagonal 0.062 (F@2% 0.15); on a loaded machine fewer steps gave 0.078-0.107; a
# sphere in the room scores 0.098 (F 0.07). The geometry of a short RGB-only run is coarse (docs/results/mesh.md);
# smaller scenes or shorter runs did not beat the sphere. The exporter's own accuracy is tested on a known field above.
TRAIN_STEPS = 1300
CHAMFER_REL_MAX = 0.09


@pytest.fixture(scope="module")
def room(tmp_path_factory):
    """The demo room (150 frames, 320x240) and an offline map of it trained for TRAIN_STEPS with the defaults of
    ``nerf-mapping train``."""
    from nerf_mapping.config.presets import offline_config
    from nerf_mapping.data import load_dataset
    from nerf_mapping.scene import SceneConfig, generate_scene
    from nerf_mapping.training.offline import build_trainer, checkpoint_extra

    root = tmp_path_factory.mktemp("mesh_room")
    scene = root / "scene"
    generate_scene(SceneConfig(seed=0, frames=150, width=320, height=240, write_bag=False), scene, progress=False)
    data = load_dataset(scene, "train", 1)
    trainer = build_trainer(data, offline_config(data, seed=0))
    trainer.train(max_steps=TRAIN_STEPS, progress=False)
    ckpt = root / "checkpoint.pt"
    trainer.save(ckpt, extra=checkpoint_extra(data, scene, 1))
    return {"scene": scene, "data": data, "ckpt": ckpt, "root": root}


def _cli(*args):
    from nerf_mapping.cli.main import main

    return main([str(a) for a in args])


def _scores(room, vertices, triangles):
    from nerf_mapping.scene.mesh_io import read_labeled_ply

    gt = read_labeled_ply(room["scene"] / "mesh.ply")
    data = room["data"]
    truth = (gt["vertices"], gt["triangles"])
    g = sample_surface(*truth, 60000, seed=1)
    g = g[visible_mask(g, data.cameras, data.depths)]
    diag = float(np.linalg.norm(np.diff(data.scene_box.numpy(), axis=0)))
    s = mesh_scores((vertices, triangles), sample_surface(vertices, triangles, 30000, seed=0), truth, g,
                    {"2pct": 0.02 * diag})
    return s["chamfer"] / diag, s["fscore_2pct"]


def test_poisson_export_is_close_to_the_ground_truth(room, capsys):
    import open3d as o3d

    out = room["root"] / "export"
    assert _cli("export", "poisson", "--checkpoint", room["ckpt"], "--output-dir", out, "--depth", 8,
                "--num-points", 60000, "--quiet") == 0
    summary = json.loads(capsys.readouterr().out.split("done in")[0])
    mesh = o3d.io.read_triangle_mesh(str(out / "mesh.ply"))
    assert summary["file"] == str((out / "mesh.ply").resolve()) or Path(summary["file"]) == out / "mesh.ply"
    assert len(mesh.triangles) == summary["triangles"] > 5000 and mesh.has_vertex_colors()
    v, f = np.asarray(mesh.vertices), np.asarray(mesh.triangles)
    box = room["data"].scene_box.numpy()
    assert (v >= box[0] - 1e-6).all() and (v <= box[1] + 1e-6).all()  # cropped to the scene box
    ours, f_ours = _scores(room, v, f)
    sphere = o3d.geometry.TriangleMesh.create_sphere(radius=1.5)
    sphere.translate(box.mean(axis=0))
    s_sphere, _ = _scores(room, np.asarray(sphere.vertices), np.asarray(sphere.triangles))
    print(f"chamfer/diagonal: ours {ours:.4f} (F@2% {f_ours:.3f}), sphere {s_sphere:.4f}")
    assert ours < CHAMFER_REL_MAX and ours < 0.9 * s_sphere


def test_pointcloud_export_has_oriented_normals(room):
    import open3d as o3d

    out = room["root"] / "export_pc"
    assert _cli("export", "pointcloud", "--checkpoint", room["ckpt"], "--output-dir", out, "--name", "pts",
                "--num-points", 20000, "--quiet") == 0
    pcd = o3d.io.read_point_cloud(str(out / "pts.ply"))
    assert len(pcd.points) > 2000 and pcd.has_normals() and pcd.has_colors()
    # normals face the cameras: towards the training camera nearest to each point for nearly every point (the
    # cameras' centroid is no reference once the map is sharp: the far side of the furniture faces away from it)
    p, n = np.asarray(pcd.points), np.asarray(pcd.normals)
    cams = room["data"].cameras.c2w[:, :, 3].numpy()
    nearest = cams[np.argmin(((p[:, None, :] - cams[None, :, :]) ** 2).sum(-1), axis=1)]
    assert np.mean(np.sum((nearest - p) * n, axis=1) > 0) > 0.9


def test_export_refuses_bad_input(room, tmp_path):
    out = tmp_path / "o"
    for args, msg in (((tmp_path / "missing.pt",), "not found"), ((room["ckpt"], "--depth", 13), "depth"),
                      ((room["ckpt"], "--name", "../escape.ply"), "'..'"),
                      ((room["ckpt"], "--bounds", 0, 0, 0, -1, 1, 1), "bounds")):
        with pytest.raises(SystemExit) as e:
            _cli("export", "poisson", "--checkpoint", args[0], "--output-dir", out, *args[1:], "--quiet")
        assert msg in str(e.value), (args, e.value)
    assert not (tmp_path / "escape.ply").exists()
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(SystemExit, match="not a nerf_mapping checkpoint"):
        _cli("export", "poisson", "--checkpoint", foreign, "--output-dir", out, "--quiet")


def test_mapper_export_without_keyframes_is_refused(tmp_path):
    from nerf_mapping.mapping.config import MapperConfig
    from nerf_mapping.mapping.mapper import OnlineMapper

    m = OnlineMapper(MapperConfig())
    with pytest.raises(ValueError, match="no keyframes"):
        m.views.export_mesh(tmp_path / "m.ply")
    assert not (tmp_path / "m.ply").exists()
