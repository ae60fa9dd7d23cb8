"""End-to-end CLI: train -> eval -> render on a generated scene, and clear errors on bad input."""
import json
import subprocess
import sys

import pytest


def _cli(*args, check=True):
    r = subprocess.run([sys.executable, "-m", "nerf_mapping.cli", *map(str, args)], capture_output=True, text=True,
                       timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"nerf-mapping {' '.join(map(str, args))} failed:\n{r.stdout}\n{r.stderr}")
    return r


def test_train_eval_render(tiny_scene, tmp_path):
    out = tmp_path / "run"
    r = _cli("train", "--data", tiny_scene, "--steps", 30, "--output", out, "--quiet",
             "--set", "target_samples_per_step=8192")
    ckpt = out / "checkpoint.pt"
    assert ckpt.is_file() and str(ckpt) in r.stdout
    mj = tmp_path / "m.json"
    _cli("eval", "--checkpoint", ckpt, "--split", "test", "--json", mj)
    m = json.loads(mj.read_text())
    for k in ("psnr", "ssim", "n_images", "seconds_per_image"):
        assert k in m
    assert m["n_images"] == 3  # 24 frames, every 8th held out
    assert (out / "eval_test" / "0000_gt_vs_render.png").is_file()
    video = tmp_path / "spiral.mp4"
    _cli("render", "camera-path", "--checkpoint", ckpt, "--trajectory", "spiral", "--frames", 4, "--output", video)
    assert video.stat().st_size > 1000
    # a nerfstudio camera_path.json renders too
    from nerf_mapping.export.camera_path import load_camera_path, write_camera_path
    from nerf_mapping.data import load_dataset

    data = load_dataset(tiny_scene, "test")
    cp = tmp_path / "camera_path.json"
    write_camera_path(cp, data.cameras[0:2])
    cams, _ = load_camera_path(cp)
    assert cams.c2w.shape == (2, 3, 4)
    _cli("render", "camera-path", "--checkpoint", ckpt, "--camera-path", cp, "--output", tmp_path / "cp.mp4")
    # resume continues the step count
    r = _cli("train", "--data", tiny_scene, "--steps", 5, "--output", tmp_path / "run2", "--quiet",
             "--resume", ckpt)
    assert "resumed from" in r.stdout


@pytest.mark.parametrize("args,needle", [
    (["train", "--data", "/nonexistent/dir", "--steps", "1", "--output", "/tmp/x"], "nonexistent"),
    (["eval", "--checkpoint", "/nonexistent.pt"], "not found"),
    (["train", "--data", ".", "--steps", "1", "--output", "/tmp/x", "--set", "no.such=1"], None),
])
def test_clear_errors(args, needle, tmp_path):
    r = _cli(*args, check=False)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    if needle:
        assert needle in (r.stdout + r.stderr)
