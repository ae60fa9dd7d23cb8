"""Dataparsers: synthetic transforms.json edge cases + smoke tests on the shared real datasets."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nerf_mapping.cameras import camera_directions, project
from nerf_mapping.data import DataError, detect_format, load_dataset, split_indices, subsample
from nerf_mapping.data.dtu import decompose_projection
from nerf_mapping.geometry import so3_exp

W, H = 16, 12


def look_at(eye, target=(0.0, 0.0, 0.0)) -> np.ndarray:
    """4x4 OpenGL camera-to-world looking from eye at target (z up)."""
    eye, target = np.asarray(eye, float), np.asarray(target, float)
    back = eye - target
    back /= np.linalg.norm(back)
    right = np.cross([0.0, 0.0, 1.0], back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    m = np.eye(4)
    m[:3, :4] = np.stack([right, up, back, eye], 1)
    return m


def write_capture(root: Path, n: int = 10, size=(W, H), frame_extra=None, top_extra=None, rgba=False) -> dict:
    """Write a tiny nerfstudio capture: n cameras on a circle of radius 4 around (1, 2, 0) (file units)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    frames = []
    for i in range(n):
        a = 2 * math.pi * i / n
        eye = np.array([1 + 4 * math.cos(a), 2 + 4 * math.sin(a), 0.5 + 0.2 * math.sin(2 * a)])
        name = f"images/frame_{i:03d}.png"
        mode = "RGBA" if rgba else "RGB"
        arr = rng.integers(0, 256, (size[1], size[0], 4 if rgba else 3), dtype=np.uint8)
        Image.fromarray(arr, mode).save(root / name)
        fr = {"file_path": name, "transform_matrix": look_at(eye, (1, 2, 0)).tolist()}
        if frame_extra:
            fr.update(frame_extra(i))
        frames.append(fr)
    meta = {"fl_x": 20.0, "fl_y": 21.0, "cx": 8.0, "cy": 6.0, "w": size[0], "h": size[1], "frames": frames}
    if top_extra:
        meta.update(top_extra)
    save(root, meta)
    return meta


def save(root: Path, meta: dict) -> None:
    (root / "transforms.json").write_text(json.dumps(meta))


# ================================================================================ nerfstudio: synthetic
def test_basic_splits_and_normalisation(tmp_path):
    write_capture(tmp_path, n=10)
    assert detect_format(tmp_path) == "nerfstudio"
    tr = load_dataset(tmp_path, "train")
    te = load_dataset(tmp_path, "test")
    al = load_dataset(tmp_path / "transforms.json", "all")
    assert te.frame_indices == [0, 8] and tr.frame_indices == [1, 2, 3, 4, 5, 6, 7, 9]
    assert al.frame_indices == list(range(10)) and load_dataset(tmp_path, "val").frame_indices == [0, 8]
    assert load_dataset(tmp_path, "test", test_every=3).frame_indices == [0, 3, 6, 9]
    c = al.cameras
    assert al.cameras.model_names() == ["PINHOLE"] * 10
    assert torch.allclose(c.fx, torch.full((10,), 20.0)) and torch.allclose(c.fy, torch.full((10,), 21.0))
    assert al.images[0].shape == (H, W, 3) and al.images[0].dtype == torch.uint8
    assert al.masks is None and al.depths is None
    # unbounded normalisation: focus point (1, 2, 0) -> origin, cameras within radius 1, same frame for every split
    assert al.unbounded and al.near < al.far and torch.equal(al.scene_box, torch.tensor([[-1.0] * 3, [1.0] * 3]))
    r = c.c2w[:, :, 3].norm(dim=-1)
    assert r.max() <= 1.0 + 1e-5 and r.min() > 0.9
    assert torch.allclose(al.world_transform @ torch.tensor([1.0, 2.0, 0.0, 1.0]), torch.zeros(3), atol=1e-4)
    assert math.isclose(al.world_scale, 1 / math.hypot(4.0, 0.2), rel_tol=0.05)
    assert torch.allclose(tr.world_transform, al.world_transform) and torch.allclose(te.cameras.c2w, al.cameras.c2w[[0, 8]])
    # cameras look at the origin
    fwd = -c.c2w[:, :, 2]
    assert torch.allclose((fwd * -c.c2w[:, :, 3]).sum(-1) / r, torch.ones(10), atol=1e-4)
    assert len(load_dataset(tmp_path, "all", max_frames=4)) == 4


def test_subsample_and_split_helpers():
    assert subsample(range(10), 3) == [0, 4, 9] or subsample(range(10), 3) == [0, 5, 9]
    assert subsample([1, 2], 5) == [1, 2]
    assert split_indices(17, "test") == [0, 8, 16]
    with pytest.raises(ValueError):
        split_indices(3, "bogus")


def test_per_frame_overrides(tmp_path):
    write_capture(tmp_path, n=4, frame_extra=lambda i: {"fl_x": 10.0 + i, "cx": 7.0 + 0.5 * i})
    s = load_dataset(tmp_path, "all")
    assert s.cameras.fx.tolist() == [10.0, 11.0, 12.0, 13.0]
    assert s.cameras.cx.tolist() == [7.0, 7.5, 8.0, 8.5]
    assert s.cameras.fy.tolist() == [21.0] * 4  # top-level value where not overridden


def test_all_or_none_violation(tmp_path):
    write_capture(tmp_path, n=4, frame_extra=lambda i: {"fl_x": 10.0} if i != 2 else {})
    with pytest.raises(DataError, match=r"transforms\.json: frames\[2\]\.fl_x: missing"):
        load_dataset(tmp_path)


def test_unknown_camera_model(tmp_path):
    write_capture(tmp_path, n=3, top_extra={"camera_model": "SIMPLE_RADIAL"})
    with pytest.raises(DataError, match=r"transforms\.json: camera_model: unknown camera model 'SIMPLE_RADIAL'"):
        load_dataset(tmp_path)


def test_opencv_detected_and_camera_angle_fallback(tmp_path):
    meta = write_capture(tmp_path, n=3, top_extra={"k1": 0.1, "p2": 0.01})
    for k in ("fl_x", "fl_y"):
        del meta[k]
    meta["camera_angle_x"] = 2 * math.atan(W / 2 / 25.0)
    save(tmp_path, meta)
    s = load_dataset(tmp_path, "all")
    assert s.metadata["camera_model"] == "OPENCV" and s.cameras.model_names() == ["OPENCV"] * 3
    assert torch.allclose(s.cameras.distortion[0], torch.tensor([0.1, 0, 0, 0, 0, 0.01]))
    assert torch.allclose(s.cameras.fx, torch.full((3,), 25.0)) and torch.allclose(s.cameras.fy, s.cameras.fx)
    meta["camera_model"] = "opencv_fisheye"
    save(tmp_path, meta)
    assert load_dataset(tmp_path, "all").cameras.model_names()[0] == "OPENCV_FISHEYE"


def test_missing_image(tmp_path):
    write_capture(tmp_path, n=4)
    (tmp_path / "images" / "frame_002.png").unlink()
    with pytest.raises(DataError, match=r"frames\[2\]\.file_path: image file not found"):
        load_dataset(tmp_path, "all")


@pytest.mark.parametrize(
    "matrix, message",
    [
        (np.diag([1.1, 1.0, 1.0, 1.0]), "rotation part is not orthonormal"),
        (np.diag([1.0, 1.0, -1.0, 1.0]), "reflection"),
        (np.full((4, 4), np.nan), "non-finite"),
        (np.eye(3), "expected a 4x4 or 3x4 matrix"),
        (np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1.0]]), "last row"),
    ],
)
def test_bad_transform_matrix(tmp_path, matrix, message):
    meta = write_capture(tmp_path, n=5)
    meta["frames"][3]["transform_matrix"] = matrix.tolist()
    save(tmp_path, meta)
    with pytest.raises(DataError, match=rf"transforms\.json: frames\[3\]\.transform_matrix: .*{message}"):
        load_dataset(tmp_path, "all")


def test_malformed_json(tmp_path):
    (tmp_path / "transforms.json").write_text("{not json")
    with pytest.raises(DataError, match="transforms.json: invalid JSON"):
        load_dataset(tmp_path)
    save(tmp_path, {"frames": []})
    with pytest.raises(DataError, match="transforms.json: frames: missing or empty"):
        load_dataset(tmp_path)
    save(tmp_path, {"fl_x": 1, "frames": [{"file_path": "a.png"}]})
    with pytest.raises(DataError, match=r"frames\[0\]\.transform_matrix: missing"):
        load_dataset(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nope")


def test_downscale_folders_and_area_resize(tmp_path):
    write_capture(tmp_path, n=3, size=(W, H))
    # no images_2/: area-average resize on load
    full = load_dataset(tmp_path, "all")
    half = load_dataset(tmp_path, "all", downscale=2)
    assert half.images[0].shape == (H // 2, W // 2, 3)
    block = full.images[1][:2, :2].float().mean((0, 1))
    assert (half.images[1][0, 0].float() - block).abs().max() <= 1.0
    assert torch.allclose(half.cameras.fx, full.cameras.fx / 2) and torch.allclose(half.cameras.cy, full.cameras.cy / 2)
    assert half.cameras.width.tolist() == [W // 2] * 3
    # images_2/ present: used as-is (recognisable constant colour)
    (tmp_path / "images_2").mkdir()
    for i in range(3):
        Image.fromarray(np.full((H // 2, W // 2, 3), 7 * (i + 1), np.uint8)).save(tmp_path / f"images_2/frame_{i:03d}.png")
    pre = load_dataset(tmp_path, "all", downscale=2)
    assert pre.images[2].unique().tolist() == [21]
    assert pre.image_paths[0].parent.name == "images_2"
    assert torch.allclose(pre.cameras.fx, half.cameras.fx)
    with pytest.raises(ValueError):
        load_dataset(tmp_path, downscale=0)


def test_depth_and_mask_loading(tmp_path):
    (tmp_path / "depths").mkdir()
    (tmp_path / "masks").mkdir()
    depth_mm = np.full((H, W), 1500, np.uint16)
    depth_mm[0, 0] = 0  # invalid
    for i in range(3):
        Image.fromarray(depth_mm).save(tmp_path / f"depths/d{i}.png")
        m = np.zeros((H, W), np.uint8)
        m[:, : W // 2] = 255
        Image.fromarray(m).save(tmp_path / f"masks/m{i}.png")
    write_capture(tmp_path, n=3, frame_extra=lambda i: {"depth_file_path": f"depths/d{i}.png",
                                                        "mask_file_path": f"masks/m{i}.png"})
    s = load_dataset(tmp_path, "all")
    d = s.depths[0]
    assert d.dtype == torch.float32 and d.shape == (H, W) and d[0, 0] == 0
    assert torch.isclose(d[5, 5], torch.tensor(1.5 * s.world_scale), rtol=1e-5)
    assert s.masks[0].dtype == torch.bool and s.masks[0][:, : W // 2].all() and not s.masks[0][:, W // 2:].any()
    # downscale: masks and depths follow the image size; invalid pixels do not pull the average down
    s2 = load_dataset(tmp_path, "all", downscale=2)
    assert s2.depths[1].shape == (H // 2, W // 2) and torch.isclose(s2.depths[1][0, 0], d[5, 5], rtol=1e-5)
    assert s2.masks[1].shape == (H // 2, W // 2)
    # explicit unit factor and .npy depth (metres)
    meta = json.loads((tmp_path / "transforms.json").read_text())
    meta["depth_unit_scale_factor"] = 1e-4
    save(tmp_path, meta)
    assert torch.isclose(load_dataset(tmp_path, "all").depths[0][5, 5], torch.tensor(0.15 * s.world_scale), rtol=1e-5)
    np.save(tmp_path / "depths/d0.npy", np.full((H, W), 2.0, np.float32))
    for i, fr in enumerate(meta["frames"]):
        fr["depth_file_path"] = "depths/d0.npy"
    save(tmp_path, meta)
    assert torch.isclose(load_dataset(tmp_path, "all").depths[2][3, 3], torch.tensor(2.0 * s.world_scale), rtol=1e-5)


def test_scene_box_keeps_file_frame(tmp_path):
    box = [[-1.0, 0.0, -2.0], [3.0, 4.0, 2.0]]
    write_capture(tmp_path, n=4, top_extra={"scene_box": box})
    s = load_dataset(tmp_path, "all")
    assert not s.unbounded and torch.equal(s.scene_box, torch.tensor(box))
    assert torch.equal(s.world_transform, torch.eye(3, 4)) and s.world_scale == 1.0
    # poses stay in file units: cameras keep their distance ~4 from (1, 2, 0)
    dist = (s.cameras.c2w[:, :, 3] - torch.tensor([1.0, 2.0, 0.0])).norm(dim=-1)
    assert torch.allclose(dist, torch.full((4,), 4.0), rtol=0.01)
    assert s.far > 5
    meta = json.loads((tmp_path / "transforms.json").read_text())
    meta["scene_box"] = [[0, 0, 0], [0, 1, 1]]
    save(tmp_path, meta)
    with pytest.raises(DataError, match="scene_box"):
        load_dataset(tmp_path)


def test_rgba_composited_on_background(tmp_path):
    write_capture(tmp_path, n=2, rgba=True)
    raw = np.asarray(Image.open(tmp_path / "images/frame_001.png")).astype(np.float32) / 255
    s = load_dataset(tmp_path, "all", background=(0.0, 1.0, 0.0))
    a = raw[..., 3:]
    expect = raw[..., :3] * a + np.array([0.0, 1.0, 0.0]) * (1 - a)
    assert np.abs(s.images[1].numpy() / 255.0 - expect).max() <= 0.5 / 255 + 1e-6


def test_explicit_split_filenames(tmp_path):
    meta = write_capture(tmp_path, n=5)
    meta["train_filenames"] = ["images/frame_000.png", "./images/frame_001.png", "images/frame_004.png"]
    meta["test_filenames"] = ["images/frame_002.png", "images/frame_003.png"]
    save(tmp_path, meta)
    assert load_dataset(tmp_path, "train").frame_indices == [0, 1, 4]
    assert load_dataset(tmp_path, "test").frame_indices == [2, 3]
    with pytest.raises(DataError, match="val_filenames"):
        load_dataset(tmp_path, "val")


# ================================================================================ blender / dtu: synthetic
def test_blender_synthetic(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    for split, n in (("train", 3), ("test", 2)):
        frames = []
        for i in range(n):
            Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(tmp_path / f"{split}/r_{i}.png")
            frames.append({"file_path": f"./{split}/r_{i}", "transform_matrix": look_at([0, -4, 1]).tolist()})
        (tmp_path / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": 0.5, "frames": frames}))
    assert detect_format(tmp_path) == "blender"
    s = load_dataset(tmp_path, "test", background=(1.0, 0.0, 0.0))
    assert s.frame_indices == [3, 4] and s.images[0][0, 0].tolist() == [255, 0, 0]
    assert math.isclose(s.cameras.fx[0].item(), 4 / math.tan(0.25), rel_tol=1e-6)
    assert (s.near, s.far, s.unbounded) == (2.0, 6.0, False)
    assert len(load_dataset(tmp_path, "all")) == 5
    with pytest.raises(DataError, match="transforms_val.json"):
        load_dataset(tmp_path, "val")


def test_decompose_projection():
    K = np.array([[700.0, 0.5, 310.0], [0.0, 705.0, 250.0], [0.0, 0.0, 1.0]])
    R = so3_exp(torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)).numpy()
    C = np.array([0.5, -2.0, 3.0])
    P = 3.7 * K @ np.concatenate([R, -R @ C[:, None]], 1)
    for sign in (1, -1):
        K2, R2, C2 = decompose_projection(sign * P)
        assert np.allclose(K2, K) and np.allclose(R2, R) and np.allclose(C2, C)


def test_detect_format_errors(tmp_path):
    with pytest.raises(DataError, match="unrecognised dataset layout"):
        detect_format(tmp_path)


# ================================================================================ real data (shared)
def test_lego(shared_data):
    root = shared_data / "nerf_synthetic_lego"
    assert detect_format(root) == "blender"
    tr = load_dataset(root, "train", downscale=2)
    assert len(tr) == 100 and tr.images[0].shape == (200, 200, 3)
    # the shared copy is the 400x400 half-resolution release: focal 555.56 px at 400 (1111.11 at the original 800)
    w_full = 400
    f_full = 0.5 * w_full / math.tan(0.5 * 0.6911112070083618)
    assert math.isclose(f_full, 555.5555, rel_tol=1e-5)
    assert torch.allclose(tr.cameras.fx, torch.full((100,), f_full / 2)) and tr.cameras.cx[0].item() == 100.0
    assert (tr.near, tr.far, tr.unbounded) == (2.0, 6.0, False)
    assert torch.allclose(tr.scene_box, torch.tensor([[-1.5] * 3, [1.5] * 3]))
    # white background composited: corners of the image are white
    assert tr.images[0][0, 0].tolist() == [255, 255, 255]
    te = load_dataset(root, "test", downscale=4)
    assert len(te) == 200 and te.frame_indices[0] == 100 and te.images[0].shape == (100, 100, 3)
    with pytest.raises(DataError, match="transforms_val.json"):
        load_dataset(root, "val")


def test_dtu(shared_data):
    root = shared_data / "dtu_scan65_neus"
    assert detect_format(root) == "dtu"
    s = load_dataset(root, "all")
    te = load_dataset(root, "test")
    assert len(s) == 49 and te.frame_indices == [0, 8, 16, 24, 32, 40, 48]
    assert len(load_dataset(root, "train", max_frames=3)) == 3
    assert s.masks is not None and len(s.masks) == 49 and s.masks[0].dtype == torch.bool
    assert 0.02 < s.masks[0].float().mean() < 0.9
    assert s.images[0].shape == (300, 400, 3) and s.metadata["intrinsics_scale"] == 0.25
    assert "dtu_scale_mat" in s.metadata and not s.unbounded
    c = s.cameras
    centres = c.c2w[:, :, 3]
    r = centres.norm(dim=-1)
    assert (r > 1.0).all() and (r < 6.0).all()  # object in the unit sphere, cameras outside it, near
    look = (-c.c2w[:, :, 2] * -centres).sum(-1) / r
    assert (look > 0.98).all()  # every optical axis passes close to the origin
    # the decomposed pinhole reproduces P = world_mat @ scale_mat (scaled to the 400x300 images)
    npz = np.load(root / "cameras_sphere.npz")
    X = np.random.default_rng(0).uniform(-0.5, 0.5, (50, 3))
    for i in (0, 17, 48):
        P = (npz[f"world_mat_{i}"] @ npz[f"scale_mat_{i}"])[:3]
        uvw = np.c_[X, np.ones(50)] @ P.T
        uv = uvw[:, :2] / uvw[:, 2:] * 0.25
        c2w = c.c2w[i].double()
        d_cam = (torch.from_numpy(X) - c2w[:, 3]) @ c2w[:, :3]
        u, v = project(c, torch.full((50,), i), d_cam.float())
        assert np.abs(np.stack([u.numpy(), v.numpy()], 1) - uv).max() < 1e-2
    # world_transform maps DTU millimetres to the normalised frame
    S = s.metadata["dtu_scale_mat"]
    assert torch.allclose(s.world_transform.double() @ torch.from_numpy(S[:, 3]), torch.zeros(3, dtype=torch.float64), atol=1e-4)
    assert math.isclose(s.world_scale, 1 / S[0, 0], rel_tol=1e-6)
    noisy = load_dataset(root, "test", cameras_file="cameras_linear_init.npz")
    ang = torch.acos(((noisy.cameras.c2w[:, :, :3] * te.cameras.c2w[:, :, :3]).sum((1, 2)) - 1).clamp(-2, 2) / 2)
    assert ang.max() > 1e-3 and ang.max() < math.radians(10)
    half = load_dataset(root, "test", downscale=2)
    assert half.images[0].shape == (150, 200, 3) and half.masks[0].shape == (150, 200)
    assert torch.allclose(half.cameras.fx, te.cameras.fx / 2)


def test_fox(shared_data):
    root = shared_data / "instant_ngp_fox"
    assert detect_format(root) == "nerfstudio"
    s = load_dataset(root, "test", downscale=4)
    assert s.metadata["num_frames_total"] == 67 and s.frame_indices == list(range(0, 67, 8))
    assert s.metadata["camera_model"] == "OPENCV" and s.cameras.model_names()[0] == "OPENCV"
    assert (s.cameras.distortion[:, [0, 1, 4, 5]] != 0).all()
    assert s.images[0].shape == (480, 270, 3)
    assert math.isclose(s.cameras.fx[0].item(), 1375.52 / 4, rel_tol=1e-5)
    assert math.isclose(s.cameras.cy[0].item(), 965.268 / 4, rel_tol=1e-5)
    assert s.unbounded and s.cameras.c2w[:, :, 3].norm(dim=-1).max() <= 1 + 1e-5
    tr = load_dataset(root, "train", max_frames=2, downscale=8)
    assert len(tr) == 2 and tr.frame_indices[0] == 1
    assert torch.allclose(tr.world_transform, s.world_transform)
    # cameras look at the focus point (origin)
    c = s.cameras
    look = (-c.c2w[:, :, 2] * -c.c2w[:, :, 3]).sum(-1) / c.c2w[:, :, 3].norm(dim=-1)
    assert (look > 0.9).all()
    # undistortion round trip on the real calibration (full resolution)
    px = torch.tensor([0.5, 269.5, 135.0]) * 4
    py = torch.tensor([0.5, 479.5, 240.0]) * 4
    full = c.scaled(4.0)
    d = camera_directions(full, torch.zeros(3, dtype=torch.int64), px, py)
    u, v = project(full, torch.zeros(3, dtype=torch.int64), d)
    assert (u - px).abs().max() < 1e-3 and (v - py).abs().max() < 1e-3
