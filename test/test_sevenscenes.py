"""7-Scenes RGB-D loader (the shared RedKitchen capture), the depth metric of ``eval`` and ``train --no-depth``."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nerf_mapping.cameras import (Cameras, camera_directions, distance_to_z_depth, pixel_centers, project,
                                  z_depth_to_distance)
from nerf_mapping.config.presets import capture_kind
from nerf_mapping.data import FORMATS, DataError, detect_format, load_dataset
from nerf_mapping.evaluation.depth import depth_abs_errors, median_of, z_depth_image
from nerf_mapping.evaluation.images import evaluate

FOLDER = "7scenes_redkitchen_rgbd"


@pytest.fixture(scope="module")
def root(shared_data) -> Path:
    p = shared_data / FOLDER
    if not p.is_dir():
        pytest.skip(f"{p} not found")
    return p


@pytest.fixture(scope="module")
def scene_all(root):
    """Every frame at 160x120 (the loader reads all 100 depth maps either way, for the scene box)."""
    return load_dataset(root, split="all", downscale=4)


def copy_frames(root: Path, dst: Path, numbers=(0, 5, 10)) -> Path:
    """A small copy of the capture (its data/ folder) holding the given capture frames."""
    src = root / "data"
    dst.mkdir(parents=True)
    shutil.copy(src / "camera-intrinsics.txt", dst)
    for n in numbers:
        for suffix in (".color.jpg", ".depth.png", ".pose.txt"):
            shutil.copy(src / f"frame-{n:06d}{suffix}", dst)
    return dst


# ---------------------------------------------------------------------------------------------------------- loader
def test_detect_format(root):
    assert "7scenes" in FORMATS
    assert detect_format(root) == "7scenes"
    assert detect_format(root / "data") == "7scenes"
    assert detect_format(root / "data" / "camera-intrinsics.txt") == "7scenes"


def test_splits_and_timestamps(root, scene_all):
    train = load_dataset(root, split="train", downscale=8)
    test = load_dataset(root, split="test", downscale=8)
    assert len(scene_all) == 100 and len(train) == 87 and len(test) == 13
    assert test.frame_indices == list(range(0, 100, 8))
    assert sorted(train.frame_indices + test.frame_indices) == list(range(100))
    # every 5th capture frame was kept, at 30 Hz
    assert scene_all.metadata["capture_frames"] == list(range(0, 500, 5))
    np.testing.assert_allclose(scene_all.metadata["timestamps_s"], np.arange(0, 500, 5) / 30.0)
    np.testing.assert_allclose(test.metadata["timestamps_s"], np.arange(0, 500, 40) / 30.0)
    # one scene frame for every split
    assert torch.equal(train.scene_box, test.scene_box) and train.near == test.near and train.far == test.far
    sub = load_dataset(root, split="train", downscale=8, max_frames=5)
    assert len(sub) == 5 and sub.frame_indices[0] == 1 and sub.frame_indices[-1] == 99


def test_images_cameras_poses(root, scene_all):
    d = scene_all
    assert d.format == "7scenes" and not d.unbounded and d.world_scale == 1.0
    assert torch.equal(d.world_transform, torch.eye(3, 4))
    assert d.images[0].shape == (120, 160, 3) and d.images[0].dtype == torch.uint8
    assert d.depths[0].shape == (120, 160) and d.depths[0].dtype == torch.float32
    # K = 585, 585, 320, 240 at 640x480, scaled by 1/4
    assert d.cameras.fx[0] == pytest.approx(146.25) and d.cameras.fy[0] == pytest.approx(146.25)
    assert d.cameras.cx[0] == pytest.approx(80.0) and d.cameras.cy[0] == pytest.approx(60.0)
    # OpenCV file poses -> OpenGL: same centre, y and z axes negated (the files' rotations are orthonormal to ~1e-4;
    # parse_pose re-orthonormalises them)
    f = np.loadtxt(root / "data" / "frame-000010.pose.txt")
    c2w = d.cameras.c2w[2].double().numpy()
    np.testing.assert_allclose(c2w[:, 0], f[:3, 0], atol=1e-3)
    np.testing.assert_allclose(c2w[:, 1:3], -f[:3, 1:3], atol=1e-3)
    np.testing.assert_allclose(c2w[:, 3], f[:3, 3], atol=1e-6)
    # a handheld camera at 6 Hz: centres move by centimetres per frame, metres over the capture
    c = d.cameras.c2w[:, :, 3]
    steps = (c[1:] - c[:-1]).norm(dim=-1)
    assert 0.005 < float(steps.median()) < 0.1 and float(steps.max()) < 0.25
    assert float(steps.sum()) > 1.0


def test_depth_validity_and_range(root, scene_all):
    full = load_dataset(root, split="test", downscale=1, max_frames=4)
    dep = torch.stack(full.depths)
    valid = dep > 0
    assert 0.85 < float(valid.float().mean()) < 0.97  # 4-11 % holes (PROVENANCE.txt)
    assert 0.88 <= scene_all.metadata["depth_valid_fraction"] <= 0.96  # 0.889 measured over all 100 frames
    v = dep[valid]
    assert float(v.min()) >= 0.5 and float(v.max()) <= 4.0  # metres: no 65.535 m "invalid" readings
    lo, hi = scene_all.metadata["depth_range_m"]
    assert 0.5 < lo < 1.2 and 2.5 < hi < 4.0


def test_depth_is_z_depth_consistent_across_frames(scene_all):
    """Back-project frame i's depth with the loaded (OpenGL) camera and project it into frame i+1: the depth there
    agrees. Holds only with the right axes, intrinsics and z-depth semantics."""
    d = scene_all
    cams = d.cameras
    for i in (10, 60):
        j = i + 1
        w, h = int(cams.width[i]), int(cams.height[i])
        px, py = pixel_centers(w, h)
        dirs = camera_directions(cams, torch.tensor(i), px, py)
        z = d.depths[i].reshape(-1)
        ok = z > 0
        pts_cam = dirs[ok] * (z[ok] / -dirs[ok, 2])[:, None]  # z-depth -> point on the unit ray
        world = pts_cam @ cams.c2w[i, :, :3].T + cams.c2w[i, :, 3]
        in_j = (world - cams.c2w[j, :, 3]) @ cams.c2w[j, :, :3]  # world -> camera j (rotation transposed)
        u, v = project(cams, torch.tensor(j), in_j)
        inside = (in_j[:, 2] < 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        dj = d.depths[j][v[inside].long(), u[inside].long()]
        zj = -in_j[inside, 2]
        both = dj > 0
        assert float(both.float().mean()) > 0.8
        err = (zj[both] - dj[both]).abs()
        assert float(err.median()) < 0.03, (i, float(err.median()))


def test_scene_box_inside_out(scene_all):
    d = scene_all
    box = d.scene_box
    c = d.cameras.c2w[:, :, 3]
    assert bool(((c > box[0]) & (c < box[1])).all())
    size = box[1] - box[0]
    assert bool((size > 1.0).all() and (size < 10.0).all())  # a kitchen, in metres
    assert capture_kind(d) == "inside_out"
    assert 0.05 <= d.near < 0.8  # nearer than anything the sensor saw (>= 0.8 m)
    corners = torch.cartesian_prod(*[box[:, k] for k in range(3)])
    assert d.far >= float(torch.cdist(c, corners).max()) - 1e-4


def test_broken_copies(root, tmp_path):
    good = copy_frames(root, tmp_path / "good")
    d = load_dataset(good, split="all", downscale=8)
    assert len(d) == 3 and d.metadata["capture_frames"] == [0, 5, 10]

    missing = copy_frames(root, tmp_path / "missing")
    (missing / "frame-000005.pose.txt").unlink()
    with pytest.raises(DataError, match=r"frame-000005\.pose\.txt: pose: file not found"):
        load_dataset(missing, split="all")

    bad = copy_frames(root, tmp_path / "bad")
    (bad / "frame-000010.pose.txt").write_text("1 0 0 0\n0 2 0 0\n0 0 1 0\n0 0 0 1\n")
    with pytest.raises(DataError, match=r"frame-000010\.pose\.txt: pose: rotation part is not orthonormal"):
        load_dataset(bad, split="all")

    bad_k = copy_frames(root, tmp_path / "bad_k")
    (bad_k / "camera-intrinsics.txt").write_text("585 0 320\n0 585 240\n")
    with pytest.raises(DataError, match=r"camera-intrinsics\.txt: K: expected a 3x3 matrix"):
        load_dataset(bad_k, split="all")

    no_depth = copy_frames(root, tmp_path / "no_depth")
    (no_depth / "frame-000000.depth.png").unlink()
    with pytest.raises(DataError, match=r"frame-000000\.depth\.png: depth: file not found"):
        load_dataset(no_depth, split="all")

    with pytest.raises(DataError, match=r"7scenes"):
        detect_format(tmp_path)  # no dataset at the top


def test_depth_65535_is_invalid(root, tmp_path):
    cp = copy_frames(root, tmp_path / "sat")
    p = cp / "frame-000005.depth.png"
    raw = np.asarray(Image.open(p)).copy()
    raw[:10, :10] = 65535
    Image.fromarray(raw).save(p)
    d = load_dataset(cp, split="all")
    assert float(d.depths[1][:10, :10].abs().max()) == 0.0
    assert float(d.depths[1].max()) < 5.0


# ----------------------------------------------------------------------------------------------------- depth metric
def _pinhole(w=8, h=6, f=5.0) -> Cameras:
    return Cameras.create(c2w=torch.eye(3, 4)[None], fx=f, fy=f, cx=w / 2, cy=h / 2, width=w, height=h)


def test_z_depth_of_a_plane():
    """A wall at z = 2 m in front of the camera: the ray distance grows off-centre, the z-depth does not."""
    cams = _pinhole()
    px, py = pixel_centers(8, 6)
    dirs = camera_directions(cams, torch.tensor(0), px, py)
    t = (2.0 / -dirs[:, 2]).reshape(6, 8)
    assert float(t.max()) > 2.1  # off-axis rays are longer
    torch.testing.assert_close(z_depth_image(t, cams, 0), torch.full((6, 8), 2.0))
    d = torch.tensor([[0.6, 0.0, -0.8]])
    torch.testing.assert_close(distance_to_z_depth(torch.tensor([3.0]), d), torch.tensor([2.4]))
    torch.testing.assert_close(z_depth_to_distance(torch.tensor([2.4]), d), torch.tensor([3.0]))


def test_depth_abs_errors_and_median():
    pred = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    gt = torch.tensor([[1.5, 0.0, 2.0], [4.0, float("nan"), 9.0]])  # 0 and nan: invalid
    e = depth_abs_errors(pred, gt, world_scale=2.0)  # scene units / 2 = metres
    torch.testing.assert_close(e, torch.tensor([0.25, 0.5, 0.0, 1.5]))
    assert median_of([e]) == pytest.approx(0.375)  # even count: mean of the middle two
    assert median_of([e, torch.tensor([10.0])]) == pytest.approx(0.5)  # over all pixels together
    assert np.isnan(median_of([torch.zeros(0)]))


def test_evaluate_reports_depth_median():
    """``evaluate`` on a fake render of a plane at z = 2 (as ray distances), against sensor depth 2.1 (with a row of
    holes) and 1.8."""
    from nerf_mapping.data import SceneData

    w, h = 16, 12  # SSIM's 11x11 window needs at least that much image
    cams = Cameras.create(c2w=torch.eye(3, 4)[None].repeat(2, 1, 1), fx=10.0, fy=10.0, cx=8.0, cy=6.0,
                          width=w, height=h)
    px, py = pixel_centers(w, h)
    t = (2.0 / -camera_directions(cams, torch.tensor(0), px, py)[:, 2]).reshape(h, w)
    gt0 = torch.full((h, w), 2.1)
    gt0[0] = 0.0
    gt1 = torch.full((h, w), 1.8)
    img = torch.zeros(h, w, 3, dtype=torch.uint8)
    scene = SceneData(cams, [img, img], [Path("a"), Path("b")], [0, 1], None, [gt0, gt1],
                      torch.tensor([[-1.0] * 3, [1.0] * 3]), False, 0.1, 10.0, torch.eye(3, 4), 1.0, "test")

    def render(cameras, i):
        return {"rgb": torch.zeros(h, w, 3), "depth": t}

    res = evaluate(render, scene, progress=False)
    # 176 valid pixels at 0.1 m, 192 at 0.2 m: the median over all pixels is 0.2 (per image: 0.1 and 0.2)
    assert res["depth_abs_median_m"] == pytest.approx(0.2, abs=1e-5)
    assert [r["depth_abs_median_m"] for r in res["per_image"]] == pytest.approx([0.1, 0.2], abs=1e-5)
    scene.world_scale = 2.0  # scene units are half-metres: errors in metres halve
    assert evaluate(render, scene, progress=False)["depth_abs_median_m"] == pytest.approx(0.1, abs=1e-5)
    scene.depths = None
    assert "depth_abs_median_m" not in evaluate(render, scene, progress=False)


# ------------------------------------------------------------------------------------------------- train --no-depth
@pytest.mark.parametrize("no_depth", [False, True])
def test_train_no_depth_reaches_frame_store(root, tmp_path, monkeypatch, no_depth):
    """``train --no-depth`` drops the depth before the frame store is built; without it the store has depth."""
    import nerf_mapping.training.offline as offline
    from nerf_mapping.cli.main import main

    seen = {}

    class Built(Exception):
        pass

    def build_trainer(data, cfg):
        fs = offline.frame_store_from(data, seed=cfg.seed)
        seen["depth"] = fs.sample(64)[0].depth
        raise Built

    monkeypatch.setattr(offline, "build_trainer", build_trainer)
    argv = ["train", "--data", str(root), "--steps", "1", "--downscale", "8", "--max-frames", "2",
            "--output", str(tmp_path / "out"), "--quiet"] + (["--no-depth"] if no_depth else [])
    with pytest.raises(Built):
        main(argv)
    if no_depth:
        assert seen["depth"] is None
    else:
        assert seen["depth"] is not None and float(seen["depth"].max()) > 0.5
