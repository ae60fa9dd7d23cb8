"""Joint pose refinement on real data (a small, low-resolution crop of lego): the pose error must drop by a real
margin; plus the CLI paths (train with pose noise -> poses export / errors) and DTU's linear-init cameras."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

LEGO = "nerf_synthetic_lego"
DTU = "dtu_scan65_neus"


def _small_cfg(cfg):
    cfg.target_samples_per_step = 8192
    cfg.field.encoding.log2_hashmap_size = 15
    cfg.field.encoding.max_resolution = 256
    cfg.grid.resolution = 64
    cfg.threads = None
    return cfg


def test_refinement_reduces_pose_error_on_lego(shared_data):
    from nerf_mapping.data import load_dataset
    from nerf_mapping.config.presets import offline_config
    from nerf_mapping.training.offline import build_trainer
    from nerf_mapping.evaluation.poses import perturb_poses, pose_errors, refined_train_poses

    path = shared_data / LEGO
    if not path.is_dir():
        pytest.skip(f"{path} missing")
    data = load_dataset(path, "train", 8, max_frames=40)  # 50x50 px, 40 views
    gt = data.cameras.c2w.clone()
    noisy = perturb_poses(gt, 3.0, 0.05, seed=1)
    data.cameras.c2w = noisy
    cfg = _small_cfg(offline_config(data))
    cfg.pose.mode = "so3xr3"
    cfg.pose.c2f = (0.0, 0.4)
    # At 50x50 px and 8k samples per step the translation is barely observable: the CamP preconditioner (default,
    # the better choice at benchmark settings: lego 100x100, 1000 steps, 3 deg: 0.32 vs 0.59 deg) would enlarge
    # translation steps that are mostly noise here (measured over 2 seeds: 1.8-2.0 deg with, 1.2-1.3 without).
    cfg.pose.precondition = "none"
    cfg.pose.start_steps = 0  # a 300-step run cannot spare the default 100-step delay (2.69 -> 2.03 deg with it)
    tr = build_trainer(data, cfg)
    tr.train(max_steps=STEPS, progress=False)
    e0 = pose_errors(noisy.double().numpy(), gt.double().numpy())
    e1 = pose_errors(refined_train_poses(tr, noisy).double().numpy(), gt.double().numpy())
    print(f"median rotation {e0['median_rotation_deg']:.3f} -> {e1['median_rotation_deg']:.3f} deg, "
          f"translation {e0['median_translation']:.4f} -> {e1['median_translation']:.4f}")
    assert e1["median_rotation_deg"] < ROT_FACTOR * e0["median_rotation_deg"]
    # at 50x50 px a small camera rotation and a lateral shift look alike; the translation must at least not blow up
    assert e1["median_translation"] < TRANS_FACTOR * e0["median_translation"]


# Measured (same settings, 2 training seeds): 2.69 -> 1.19 / 1.28 deg median rotation after 300 steps (0.44-0.48x);
# the translation error rose 0.038 -> 0.049 / 0.051 (rotation/translation ambiguity at this resolution).
STEPS = 300
ROT_FACTOR = 0.75
TRANS_FACTOR = 2.0


def test_train_cli_pose_flags_export_and_errors(shared_data, tmp_path):
    """train --pose-noise-* --pose-opt --c2f, then poses export (nerfstudio transforms.json) and poses errors."""
    from nerf_mapping.cli import main
    from nerf_mapping.data import load_dataset

    path = shared_data / LEGO
    if not path.is_dir():
        pytest.skip(f"{path} missing")
    out = tmp_path / "run"
    rc = main(["train", "--data", str(path), "--downscale", "16", "--max-frames", "8", "--steps", "3",
               "--output", str(out), "--quiet", "--pose-noise-rot-deg", "2", "--pose-noise-trans", "0.02",
               "--pose-opt", "6d", "--c2f", "0.0,0.5",
               "--set", "field.encoding.log2_hashmap_size=12", "--set", "grid.resolution=32"])
    assert rc == 0
    st = torch.load(out / "checkpoint.pt", weights_only=True)
    assert st["config"]["pose"]["mode"] == "6d" and st["config"]["pose"]["c2f"] == [0.0, 0.5]
    assert st["pose"]["params"].shape == (8, 9)
    assert "train_c2w_gt" in st["extra"]
    js = tmp_path / "transforms.json"
    assert main(["poses", "export", "--checkpoint", str(out / "checkpoint.pt"), "--output", str(js)]) == 0
    doc = json.loads(js.read_text())
    assert len(doc["frames"]) == 8
    fr = doc["frames"][0]
    assert {"file_path", "transform_matrix", "fl_x", "fl_y", "cx", "cy", "w", "h"} <= set(fr)
    assert (js.parent / fr["file_path"]).is_file()
    from PIL import Image

    with Image.open(js.parent / fr["file_path"]) as im:  # intrinsics refer to the images on disk
        assert (fr["w"], fr["h"]) == im.size
    # the exported input poses are the noisy poses in the file frame; the "gt" export reproduces the dataset's own
    gt_js = tmp_path / "gt.json"
    assert main(["poses", "export", "--checkpoint", str(out / "checkpoint.pt"), "--output", str(gt_js),
                 "--which", "gt"]) == 0
    data = load_dataset(path, "train", 16, max_frames=8)
    gt_mats = np.array([f["transform_matrix"] for f in json.loads(gt_js.read_text())["frames"]])
    assert np.allclose(gt_mats[:, :3, :4], data.cameras.c2w.double().numpy(), atol=1e-5)
    refined = np.array([f["transform_matrix"] for f in doc["frames"]])
    assert np.allclose(refined[0], gt_mats[0], atol=1e-6)  # frame 0: exact and the gauge anchor
    assert np.allclose(refined[:, 3], [0, 0, 0, 1])
    ej = tmp_path / "errors.json"
    assert main(["poses", "errors", "--checkpoint", str(out / "checkpoint.pt"), "--json", str(ej)]) == 0
    err = json.loads(ej.read_text())
    assert err["initial"]["median_rotation_deg"] > 0.5


@pytest.mark.parametrize("jobs", [1, 2])
def test_benchmark_poses_cli_writes_the_documented_json(shared_data, tmp_path, jobs):
    """``benchmark poses --noise-sweep`` at toy size: the JSON carries the issue's keys, one sweep entry per level
    with and without refinement, a breaking point (or null) and the error-vs-noise plot, whether the runs go one
    after the other or in worker processes (``--jobs 2``). (The numbers at toy size mean nothing; the real run is on
    demand, see the README.)"""
    from nerf_mapping.cli import main

    path = shared_data / LEGO
    if not path.is_dir():
        pytest.skip(f"{path} missing")
    js = tmp_path / "poses.json"
    rc = main(["benchmark", "poses", "--data", str(path), "--downscale", "16", "--max-frames", "8", "--steps", "4",
               "--tto-steps", "2", "--tto-rays", "32", "--test-views", "2", "--noise-sweep", "1,3", "--json", str(js),
               "--set", "field.encoding.log2_hashmap_size=12", "--set", "grid.resolution=32", "--jobs", str(jobs)])
    assert rc == 0
    res = json.loads(js.read_text())
    for k in ("initial_median_rotation_deg", "final_median_rotation_deg", "initial_median_translation",
              "final_median_translation", "psnr", "psnr_without_refinement", "seconds", "sweep",
              "breaking_point_deg"):
        assert k in res, k
    assert [s["noise_rot_deg"] for s in res["sweep"]] == [1.0, 3.0]
    assert res["sweep"][1]["initial_median_rotation_deg"] > res["sweep"][0]["initial_median_rotation_deg"] > 0.3
    assert all(np.isfinite(s["psnr"]) and np.isfinite(s["psnr_without_refinement"]) for s in res["sweep"])
    assert res["steps_per_run"] == 4 and res["downscale"] == 16
    assert res["breaking_point_deg"] in (None, 1.0, 3.0)
    assert (tmp_path / "pose_error_vs_noise.png").is_file()
    assert not (tmp_path / "poses.json.partial.json").exists()  # superseded by the complete JSON


def _sleep_or_fail(label, seconds):  # module level: pickled by name into the worker processes
    import time

    if label == "bad":
        raise RuntimeError("out of memory")
    time.sleep(seconds)
    return {"label": label}


def test_benchmark_poses_parallel_runs_keep_the_running_ones_when_one_fails(tmp_path):
    """``--jobs 2``: a run that fails stops the sweep, but the run going beside it is finished and kept."""
    from types import SimpleNamespace

    from nerf_mapping.benchmarks.poses import run_tasks

    args = SimpleNamespace(json=tmp_path / "sweep.json", jobs=2)
    tasks = [("slow", ("slow", 2.0)), ("bad", ("bad", 0.0))]
    with pytest.raises(RuntimeError, match="out of memory"):
        run_tasks(tasks, args, fn=_sleep_or_fail)
    kept = json.loads((tmp_path / "sweep.json.partial.json").read_text())
    assert kept["runs"] == [{"run": "slow", "label": "slow"}]


def test_benchmark_poses_keeps_finished_runs_when_a_later_one_fails(tmp_path, monkeypatch):
    """An hours-long sweep that dies keeps what it measured: every finished run lands in ``<json>.partial.json``."""
    from types import SimpleNamespace

    from nerf_mapping.benchmarks import poses as bp

    def fake(*a):
        if a[-1] == "second":
            raise RuntimeError("out of memory")
        return {"final": {"median_rotation_deg": 0.1}, "label": a[-1]}

    monkeypatch.setattr(bp, "train_and_evaluate", fake)
    args = SimpleNamespace(json=tmp_path / "sweep.json", jobs=1)
    tasks = [((1.0, "refined"), (None,) * 7 + ("first",)), ((1.0, "off"), (None,) * 7 + ("second",))]
    with pytest.raises(RuntimeError, match="out of memory"):
        bp.run_tasks(tasks, args)
    kept = json.loads((tmp_path / "sweep.json.partial.json").read_text())
    assert kept["runs"] == [{"run": [1.0, "refined"], "final": {"median_rotation_deg": 0.1}, "label": "first"}]


def test_benchmark_poses_resume_runs_only_the_missing_runs(tmp_path, monkeypatch):
    """``--resume`` takes the finished runs of an interrupted sweep from its partial JSON and runs only the others,
    and only when they were measured with the same settings."""
    from types import SimpleNamespace

    from nerf_mapping.benchmarks import poses as bp

    calls = []

    def fake(*a):
        calls.append(a[-1])
        if a[-1] == "fails":
            raise RuntimeError("killed")
        return {"label": a[-1]}

    monkeypatch.setattr(bp, "train_and_evaluate", fake)
    args = SimpleNamespace(json=tmp_path / "sweep.json", jobs=1, resume=False, seed=0, steps=2000,
                           set=["threads=1", "field.sh_degree=2"])
    settings = bp.run_settings(args, tmp_path)
    first = [((1.0, "refined"), ("a",)), ((1.0, "off"), ("fails",))]
    with pytest.raises(RuntimeError, match="killed"):
        bp.run_tasks(first, args, settings=settings)
    partial = tmp_path / "sweep.json.partial.json"

    resumed = SimpleNamespace(**{**vars(args), "resume": True, "set": ["field.sh_degree=2", "threads=2"]})
    tasks = [((1.0, "refined"), ("a again",)), ((1.0, "off"), ("b",)), ((3.0, "refined"), ("c",))]
    calls.clear()
    done = bp.run_tasks(tasks, resumed, settings=bp.run_settings(resumed, tmp_path))  # threads only change speed
    assert calls == ["b", "c"]
    assert list(done) == [k for k, _ in tasks] and done[(1.0, "refined")] == {"label": "a"}
    assert len(json.loads(partial.read_text())["runs"]) == 3

    other = SimpleNamespace(**{**vars(resumed), "steps": 500})
    with pytest.raises(ValueError, match="steps: 2000 there, 500 now"):  # the CLI reports it without a traceback
        bp.run_tasks(tasks, other, settings=bp.run_settings(other, tmp_path))
    partial.write_text(json.dumps([{"run": [1.0, "refined"], "label": "a"}]))  # the older format: no settings
    with pytest.raises(ValueError, match="records no settings"):
        bp.run_tasks(tasks, resumed, settings=settings)
    with pytest.raises(ValueError, match="needs --json"):
        bp.run_tasks(tasks, SimpleNamespace(**{**vars(resumed), "json": None}), settings=settings)


def test_dtu_linear_init_errors_match_provenance(shared_data):
    """The DTU linear-init cameras load, and their error against cameras.npz matches the documented size
    (median 1.16 deg / 5.85 mm, unaligned, DTU world millimetres)."""
    from nerf_mapping.data import load_dataset
    from nerf_mapping.evaluation.poses import pose_errors
    from nerf_mapping.geometry import to_file_frame

    path = shared_data / DTU
    if not (path / "cameras_linear_init.npz").is_file():
        pytest.skip(f"{path} missing")
    gt = load_dataset(path, "all", 4, cameras_file="cameras.npz")
    lin = load_dataset(path, "all", 4, cameras_file="cameras_linear_init.npz")
    raw = pose_errors(to_file_frame(lin.world_transform.numpy(), lin.cameras.c2w.numpy()),
                      to_file_frame(gt.world_transform.numpy(), gt.cameras.c2w.numpy()), align=False)
    assert raw["median_rotation_deg"] == pytest.approx(1.16, abs=0.05)
    assert raw["median_translation"] == pytest.approx(5.85, abs=0.2)
    mm = float(np.asarray(gt.metadata["dtu_scale_mat"])[0, 0])
    al = pose_errors(lin.cameras.c2w.numpy(), gt.cameras.c2w.numpy(), unit_to_mm=mm)
    assert 0.3 < al["median_rotation_deg"] < 2.0 and 1.0 < al["median_translation_mm"] < 10.0


@pytest.mark.slow  # ~155 s (the whole `benchmark drift` run): run with -m slow; results in docs/results/drift.md
def test_online_drift_spline_corrects_demo_odometry(tmp_path):
    """The node's online refinement (its trainer and defaults: drift spline + per-keyframe corrections) on the demo
    sequence, whose poses are the noisy, drifting odometry (random-walk drift, 8.5 cm RMS): the camera path must get
    closer to ground truth, overall and at the end of the loop."""
    pytest.importorskip("open3d", reason="the demo scene generator needs open3d")
    from nerf_mapping.benchmarks.drift import demo_sequence, run_drift

    data, stamps, odom = demo_sequence(tmp_path / "scene", progress=False)  # the demo scene
    res = run_drift(data, stamps, odom, steps_per_frame=4, threads=2, report_every=0, progress=False)
    before, after = res["odometry"], res["refined"]
    assert before["rmse"] > 0.05  # the sequence really drifts (8.5 cm at 320x240, same seed)
    # measured (nerf-mapping benchmark drift, the same run with one thread): 8.5 -> 5.9 cm RMS, last pose 11.5 -> 3.9
    # cm (seeds 1 / 2: 4.2 / 4.7 cm, last 4.3 / 6.7); every frame at once, 600 steps: 7.0 / 8.8; the ROS demo: 8.7 -> 6.4-8.3
    assert after["rmse"] < 0.92 * before["rmse"], (before, after)
    assert after["final"] < 0.92 * before["final"], (before, after)


def test_test_time_pose_optimisation_recovers_held_out_poses_on_masked_dtu(shared_data):
    """Held-out views start a few degrees off; photometric test-time optimisation against the frozen field (trained
    with the backdrop masked to the background, as the DTU benchmark does) must bring them back."""
    from nerf_mapping.data import load_dataset
    from nerf_mapping.config.presets import offline_config
    from nerf_mapping.training.offline import build_trainer
    from nerf_mapping.evaluation.poses import perturb_poses, pose_errors, test_time_optimize

    path = shared_data / DTU
    if not (path / "cameras.npz").is_file():
        pytest.skip(f"{path} missing")
    train = load_dataset(path, "train", 8, cameras_file="cameras.npz")  # 50x38 px
    test = load_dataset(path, "test", 8, cameras_file="cameras.npz")
    cfg = _small_cfg(offline_config(train))
    cfg.mask_background = True
    tr = build_trainer(train, cfg)
    tr.train(max_steps=TTO_TRAIN_STEPS, progress=False)
    gt = test.cameras.c2w.clone()
    start = perturb_poses(gt, TTO_NOISE_DEG, 0.02, seed=3, keep_first=False)
    est = test_time_optimize(tr, test.cameras, test.images, start, steps=100, rays_per_view=256, masks=test.masks)
    e0 = pose_errors(start.double().numpy(), gt.double().numpy(), align=False)
    e1 = pose_errors(est.double().numpy(), gt.double().numpy(), align=False)
    print(f"held-out median rotation {e0['median_rotation_deg']:.3f} -> {e1['median_rotation_deg']:.3f} deg")
    assert e1["median_rotation_deg"] < TTO_ROT_FACTOR * e0["median_rotation_deg"]


# Measured (same settings): 1.53 -> 0.48 deg median rotation (0.31x), ~33 s. With the raw pixels as the target
# (the backdrop not replaced by the background colour) this tiny field gives 0.40 deg; at 100x75 px, 1000 training
# steps and three perturbation seeds at 1.5 deg the masked target is the better one in mean error on all three
# (0.72 / 0.56 / 0.32 deg against 0.75 / 0.59 / 0.40), which is why test-time optimisation uses it.
TTO_TRAIN_STEPS = 200
TTO_NOISE_DEG = 2.0
TTO_ROT_FACTOR = 0.5
