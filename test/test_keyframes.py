"""Keyframe selection (motion thresholds, blur and duplicate rejection, downscaling) and the store's eviction."""
from __future__ import annotations

import numpy as np
import pytest

from nerf_mapping.cameras import Cameras
from nerf_mapping.training.frame_store import FrameStore
from nerf_mapping.mapping.keyframes import (BLURRY, DUPLICATE, FIRST, TOO_CLOSE, Keyframe, KeyframeConfig,
                                             KeyframeSelector, KeyframeSet, downscale_factor, downscale_image,
                                             laplacian_variance, pose_distance, redundancy_victim)

S = 1_000_000_000


def textured(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def blur(img: np.ndarray, k: int = 7) -> np.ndarray:
    a = img.astype(np.float32)
    ker = np.ones(k) / k
    a = np.apply_along_axis(lambda r: np.convolve(r, ker, mode="same"), 1, a)
    a = np.apply_along_axis(lambda r: np.convolve(r, ker, mode="same"), 0, a)
    return a.astype(np.uint8)


def at(x: float, yaw_deg: float = 0.0) -> np.ndarray:
    T = np.eye(4)
    c, s = np.cos(np.radians(yaw_deg)), np.sin(np.radians(yaw_deg))
    T[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    T[0, 3] = x
    return T


def test_motion_thresholds():
    sel = KeyframeSelector(KeyframeConfig(min_translation=0.1, min_rotation_deg=10, blur_ratio=0, duplicate_threshold=0))
    assert sel.consider(textured(0), at(0), 0) == (True, FIRST)
    assert sel.consider(textured(1), at(0.05), S) == (False, TOO_CLOSE)
    assert sel.consider(textured(2), at(0.12), 2 * S)[0]  # translation
    assert not sel.consider(textured(3), at(0.12, 5), 3 * S)[0]
    assert sel.consider(textured(4), at(0.12, 11), 4 * S)[0]  # rotation
    assert sel.counts["accepted"] == 2 and sel.counts[TOO_CLOSE] == 2


def test_min_and_max_time():
    sel = KeyframeSelector(KeyframeConfig(min_translation=0.1, min_time_s=0.5, max_time_s=5.0, blur_ratio=0,
                                          duplicate_threshold=0))
    sel.consider(textured(0), at(0), 0)
    assert sel.consider(textured(1), at(1.0), S // 10) == (False, TOO_CLOSE)  # moved but too soon
    assert sel.consider(textured(2), at(1.0), S)[0]
    assert not sel.consider(textured(3), at(1.0), 3 * S)[0]
    assert sel.consider(textured(4), at(1.0), 7 * S)[0]  # standing still for > max_time_s


def test_blur_rejected_relative_to_running_median():
    sel = KeyframeSelector(KeyframeConfig(min_translation=0.01, duplicate_threshold=0, blur_ratio=0.35))
    for i in range(6):
        assert sel.consider(textured(i), at(0.1 * i), i * S)[0]
    sharp = textured(99)
    assert laplacian_variance(blur(sharp)) < 0.2 * laplacian_variance(sharp)
    assert sel.consider(blur(sharp), at(1.0), 7 * S) == (False, BLURRY)
    assert sel.consider(sharp, at(1.0), 8 * S)[0]


def test_duplicate_rejected():
    sel = KeyframeSelector(KeyframeConfig(min_translation=0.01, blur_ratio=0, duplicate_threshold=0.01))
    img = textured(5)
    sel.consider(img, at(0), 0)
    assert sel.consider(img.copy(), at(0.5), S) == (False, DUPLICATE)
    assert sel.consider(textured(6), at(0.5), 2 * S)[0]


def test_downscale():
    assert downscale_factor(640, 320) == 2 and downscale_factor(641, 320) == 3 and downscale_factor(320, 320) == 1
    assert downscale_factor(640, 0) == 1
    img = np.zeros((5, 7, 3), np.uint8)
    img[:4, :6] = 100
    img[0, 0] = 104
    out = downscale_image(img, 2)
    assert out.shape == (2, 3, 3) and out[0, 0, 0] == 101 and out[1, 2, 0] == 100


def test_pose_distance():
    dt, dr = pose_distance(at(0), at(0.3, 30))
    assert dt == pytest.approx(0.3) and dr == pytest.approx(30)


def test_redundancy_victim_keeps_first_and_newest():
    poses = {i: at(x) for i, x in enumerate([0.0, 1.0, 1.01, 1.02, 2.0, 3.0])}
    v = redundancy_victim(list(poses), poses)
    assert v == 2  # between two nearly identical views
    assert redundancy_victim([0, 1], {0: at(0), 1: at(1)}) == 1


def test_redundancy_victim_scores_each_frame_by_its_two_neighbour_distances():
    """The vectorised choice against the definition, on a random trajectory with rotations and sparse ids."""
    rng = np.random.default_rng(0)
    ids = sorted(rng.choice(1000, size=60, replace=False).tolist())
    poses = {i: at(float(rng.uniform(0, 3)), float(rng.uniform(0, 90))) for i in ids}

    def dist(a, b):
        t, r = pose_distance(poses[a], poses[b])
        return t / 0.1 + r / 10.0

    for protect in (1, 3):
        scores = {ids[k]: (dist(ids[k - 1], ids[k]) if k > 0 else dist(ids[k], ids[k + 1])) + dist(ids[k], ids[k + 1])
                  for k in range(protect, len(ids) - 1)}
        assert redundancy_victim(ids, poses, protect=protect) == min(scores, key=scores.get)


def _cam(x: float) -> Cameras:
    c2w = np.eye(4)[:3]
    c2w[0, 3] = x
    return Cameras.create(c2w, 10.0, 10.0, 4.0, 4.0, 8, 8)


def test_keyframe_set_evicts_redundant_not_first():
    """The keyframe set admits into the trainer's frame store and, when full, evicts the most redundant keyframe
    (never the first nor the newest) from the store and from its own records alike."""
    ks = KeyframeSet(KeyframeConfig(capacity=4))
    fs = FrameStore()
    rec = Keyframe(1, np.eye(4), np.eye(4), np.eye(4))
    for x in [0.0, 1.0, 1.001, 2.0]:
        ks.admit(fs, np.zeros((8, 8, 3), np.uint8), _cam(x), rec)
    fid = ks.admit(fs, np.zeros((8, 8, 3), np.uint8), _cam(3.0), rec)
    ids = fs.frame_ids()
    assert len(ids) == 4 and 0 in ids and fid in ids and ks.latest == fid
    assert 1 not in ids or 2 not in ids  # one of the two near-duplicates went
    assert sorted(ks.info) == ids and len(ks.history) == 5  # evicted keyframes stay on the paths


def _view(i: int) -> np.ndarray:
    """A textured 48x64 image that is the same for the same view index (a replayed capture)."""
    return np.random.default_rng(1000 + i).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def _pose(x: float, yaw_deg: float = 0.0) -> np.ndarray:
    T = np.eye(4)
    a = np.radians(yaw_deg)
    T[:3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
    T[0, 3] = x
    return T


def _drive(ks: KeyframeSet, fs: FrameStore, views, t0_ns: int = 0) -> list[str]:
    """Offer views [(index, pose)] 0.1 s apart; admit the accepted ones. Returns the decisions."""
    out = []
    for k, (i, T) in enumerate(views):
        img, stamp = _view(i), t0_ns + k * 100_000_000
        ok, why = ks.consider(img, T, stamp)
        if ok:
            cam = Cameras.create(_pose(0.0)[:3], 40.0, 40.0, 32.0, 24.0, 64, 48)
            ks.admit(fs, img, cam, Keyframe(stamp, T, T, np.eye(4)))
        out.append(why)
    return out


def test_revisits_of_the_stored_views_add_no_keyframes():
    """The novelty test runs against the whole store: replaying a trajectory (a looping bag; the clock restarts)
    takes no keyframe, new ground does, and a view of the same place that changed (another image) is taken."""
    cfg = KeyframeConfig(min_translation=0.1, min_rotation_deg=5.0, blur_ratio=0, capacity=100, revisit_threshold=0.04)
    ks, fs = KeyframeSet(cfg), FrameStore()
    first_pass = [(i, _pose(0.12 * i, 3.0 * i)) for i in range(20)]
    assert _drive(ks, fs, first_pass).count("revisit") == 0
    n_first = len(fs)
    assert n_first == 20
    ks.restart_time()  # the player looped
    replay = _drive(ks, fs, first_pass, t0_ns=0)
    assert len(fs) == n_first and replay.count("revisit") == 20
    # the camera is at the first pass's last view (the drift estimate and the periodic render follow it)
    assert ks.current == 19 and ks.latest == 19 and ks.current_entry()[0] == 19
    ks.restart_time()
    _drive(ks, fs, first_pass[:5], t0_ns=0)
    assert ks.current == 4 and ks.latest == 19
    # a loop that goes on past the first pass: new poses are new ground
    beyond = [(100 + i, _pose(0.12 * (20 + i), 60.0 + 3.0 * i)) for i in range(5)]
    assert _drive(ks, fs, beyond, t0_ns=10_000_000_000).count("accepted") == 5
    # the same pose, but the scene changed there: a new view, taken
    changed = [(500, _pose(0.12 * 3, 9.0))]
    assert _drive(ks, fs, changed, t0_ns=20_000_000_000) == ["accepted"]
    # off: every moving view is taken, as before
    ks2, fs2 = KeyframeSet(KeyframeConfig(min_translation=0.1, blur_ratio=0, revisit_threshold=0)), FrameStore()
    _drive(ks2, fs2, first_pass)
    ks2.restart_time()
    _drive(ks2, fs2, first_pass)
    assert len(fs2) == 40
