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


def test_benchmark_drift_scores_the_sequence(tiny_scene, tmp_path):
    """``benchmark drift`` feeds a demo sequence frame by frame to the node's trainer and scores both paths."""
    out = tmp_path / "drift.json"
    _cli("benchmark", "drift", "--scene", tiny_scene, "--steps-per-frame", 2, "--extra-steps", 3, "--report-every", 10,
         "--threads", 1, "--quiet", "--json", out, "--set", "target_samples_per_step=4096")
    res = json.loads(out.read_text())
    assert res["frames"] == 24 and res["steps"] == 2 * 23 + 1 + 3
    assert [c["step"] for c in res["curve"]] == [10, 20, 30, 40, 50]
    assert [c["frames"] for c in res["curve"]] == [5, 10, 15, 20, 24]  # frame i enters before step 2 i + 1
    assert res["odometry"]["n"] == 24 and res["odometry"]["rmse"] > 0.0
    assert res["refined"]["rmse"] == res["refined"]["rmse"]  # finite (not NaN)
    bad = _cli("benchmark", "drift", "--scene", tiny_scene / "images", "--quiet", check=False)  # not a demo scene
    assert bad.returncode != 0 and "not a demo scene" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("args,needle", [
    (["train", "--data", "/nonexistent/dir", "--steps", "1", "--output", "/tmp/x"], "nonexistent"),
    (["eval", "--checkpoint", "/nonexistent.pt"], "not found"),
    (["benchmark", "drift", "--steps-per-frame", "-1"], "must be >= 0"),
    (["train", "--data", ".", "--steps", "1", "--output", "/tmp/x", "--set", "no.such=1"], None),
])
def test_clear_errors(args, needle, tmp_path):
    r = _cli(*args, check=False)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    if needle:
        assert needle in (r.stdout + r.stderr)
