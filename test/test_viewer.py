"""The browser viewer (nerf_mapping.viewer) without a browser: its handlers called directly, with viser's real server
and fake browser clients (an object with the ``client_id``, ``camera`` and ``scene.set_background_image`` a viser
client has). Bad input: query texts (control characters, huge, empty), a flood of camera moves (coalesced, one
render worker, training goes on), a browser that leaves mid-render or whose connection fails, non-finite cameras.
Also ``nerf-mapping view`` (a saved map and a ``train`` checkpoint, its errors) and the node serving the viewer on
``viewer.port``. The real-browser test is test_viewer_browser.py."""
from __future__ import annotations

import math
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("viser")

from nerf_mapping.viewer import Viewer, ViewerConfig  # noqa: E402
from nerf_mapping.viewer.viewer import (FILL, camera_tan, clean_query, fit_to_window, frustum_segments,  # noqa: E402
                                        matched_fov, polyline_segments, pose_from_viser, wxyz_from_matrix)

REPO = Path(__file__).resolve().parents[1]
_MAPS: dict[str, Path] = {}


# ------------------------------------------------------------------------------------------------ a small map
def semantics_config(scene: Path):
    from nerf_mapping.mapping.semantics import SemanticsConfig

    return SemanticsConfig(teacher="labels", class_names=str(scene / "labels.json"), stride=2, label_wait_s=0.5,
                           num_points=20000, warm_after_steps=0)


def build_viewer_map(scene: Path, root: Path, steps: int = 80) -> Path:
    """A small trained map of ``scene`` with a language field (labels teacher), saved by the mapper as the node's
    SaveMap does; built once per test session (shared with test_viewer_browser.py)."""
    if str(scene) in _MAPS and _MAPS[str(scene)].is_file():
        return _MAPS[str(scene)]
    import json

    from PIL import Image

    from nerf_mapping.mapping.mapper import OnlineMapper
    from test_mapping import _config, _feed, _wait

    cfg = _config(max_steps=steps)
    cfg.semantics = semantics_config(scene)
    mapper = OnlineMapper(cfg)
    mapper.start()
    try:
        frames = json.loads((scene / "transforms.json").read_text())["frames"]
        stamps = np.load(scene / "odometry.npz")["image_stamps_ns"]
        for s, f in zip(stamps, frames):
            mapper.semantics.add_labels(int(s), np.asarray(Image.open(scene / f["semantic_file_path"])))
        _feed(mapper, scene)
        _wait(lambda: mapper.trainer.step_count >= steps and not mapper.intake.queue_length, 300)
        _wait(lambda: mapper.semantics.maps_built >= len(mapper.trainer.frames) - 1, 60)
        path = root / "viewer_map.pt"
        mapper.save(path, meta={"map_frame": "map", "odom_frame": "odom"})
    finally:
        mapper.stop()
    _MAPS[str(scene)] = path
    return path


def open_viewer_map(path: Path, scene: Path, training: bool = False):
    """The map in an OnlineMapper as ``nerf-mapping view`` opens it (training on when ``training``)."""
    import dataclasses

    from nerf_mapping.cli.view import open_map
    from nerf_mapping.mapping.config import MapperConfig, OnlineTrainingConfig

    cfg = MapperConfig(training=OnlineTrainingConfig(enabled=training), semantics=semantics_config(scene))
    if training:
        cfg = dataclasses.replace(cfg, render_period_s=0.0)
    return open_map(path, cfg)


@pytest.fixture(scope="session")
def viewer_map(tiny_scene, tmp_path_factory) -> Path:
    return build_viewer_map(tiny_scene, tmp_path_factory.mktemp("viewer_map"))


class FakeClient:
    """What the viewer uses of a viser client: ``client_id``, ``camera.fov`` (set to match the mapped camera) and
    ``scene.set_background_image``; ``fail``: sending raises, as on a closed connection."""

    def __init__(self, client_id: int, fail: bool = False):
        self.client_id = client_id
        self.fail = fail
        self.images: list[tuple[float, np.ndarray]] = []
        self.camera = SimpleNamespace(fov=1.0)
        self.scene = SimpleNamespace(set_background_image=self._set)

    def _set(self, image, format="jpeg", jpeg_quality=None):
        if self.fail:
            raise ConnectionError("connection closed")
        self.images.append((time.monotonic(), image))


def _wait(cond, timeout: float = 60.0) -> None:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.02)


def _orbit_pose(angle: float, radius: float = 0.3) -> np.ndarray:
    """A camera in the tiny scene's room looking outwards horizontally (optical frame: z forward, y down)."""
    fwd = np.array([math.cos(angle), math.sin(angle), 0.0])
    down = np.array([0.0, 0.0, -1.0])
    right = np.cross(down, fwd)
    T = np.eye(4)
    T[:3, :3] = np.stack([right, down, fwd], axis=1)
    T[:3, 3] = [radius * math.cos(angle), radius * math.sin(angle), 1.2]
    return T


def _started(viewer: Viewer) -> Viewer:
    viewer.start()
    assert viewer.url.startswith("http://127.0.0.1:")
    return viewer


# ------------------------------------------------------------------------------------------------ pure parts
def test_query_text_is_cleaned_and_bounded():
    assert clean_query("  sofa ") == "sofa"
    assert clean_query("so\x00fa\x1b\u200b") == "sofa"  # control and format characters dropped
    assert clean_query("red\tsofa\nbed") == "red sofa bed"  # whitespace folded
    for bad in ("", "   ", "\x00\x01", None, 42, "x" * 201, "y" * 100_000):
        with pytest.raises(ValueError):
            clean_query(bad, 200)
    assert len(clean_query("z" * 200, 200)) == 200


def test_viser_cameras_are_optical_poses_and_the_render_fills_the_window():
    rng = np.random.default_rng(0)
    for _ in range(5):
        q = rng.normal(size=4)
        T = pose_from_viser(q, rng.normal(size=3))
        assert np.allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-9) and np.linalg.det(T[:3, :3]) > 0
        assert np.allclose(pose_from_viser(wxyz_from_matrix(T[:3, :3]), T[:3, 3]), T, atol=1e-9)
    for bad in ([0, 0, 0, 0], [1, 0, float("nan"), 0]):
        with pytest.raises(ValueError):
            pose_from_viser(bad, [0, 0, 0])
    intr = {"fx": 457.0, "fy": 457.0, "cx": 320.0, "cy": 240.0, "width": 640, "height": 480}
    img = np.random.default_rng(1).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    cam = camera_tan(intr, 2.0)
    for aspect in (2.0, 1.0, 4.0 / 3.0):
        ty = math.tan(0.5 * matched_fov(cam, aspect))
        out = fit_to_window(img, cam, (ty * aspect, ty))
        assert abs(out.shape[1] / out.shape[0] - aspect) < 0.05
        assert not (out == FILL).all(-1).any()  # a matched field of view: the render covers the whole window
        assert max(out.shape[0] / 120, out.shape[1] / 160) == pytest.approx(1.0, abs=0.02)  # a crop, not a zoom
    wide = fit_to_window(img, cam, (cam[0] * 1.5, cam[1] * 1.5))  # the window sees more: framed
    assert wide.shape == (180, 240, 3) and (wide[30:150, 40:200] == img).all()  # the render, 1:1, in the middle
    assert (wide == FILL).all(-1).sum() == 180 * 240 - 120 * 160
    # without camera info render_view renders 60 degrees horizontally at the requested aspect: no crop
    assert camera_tan(None, 2.0) == pytest.approx((math.tan(math.radians(30)), math.tan(math.radians(30)) / 2))
    assert frustum_segments(np.stack([np.eye(4)] * 3), (0.5, 0.4), 0.2).shape == (24, 2, 3)
    assert polyline_segments(np.zeros((5000, 3)), 100).shape == (99, 2, 3)
    assert polyline_segments(np.zeros((1, 3)), 100).shape == (0, 2, 3)


def test_viewer_parameters_are_node_parameters_off_by_default(tmp_path):
    import yaml

    from nerf_mapping.ros.demo import _write_params
    from nerf_mapping.ros.params import defaults, node_config

    d = defaults()
    assert d["viewer.port"] == 0 and d["viewer.host"] == "127.0.0.1"  # off unless asked, this machine only
    assert node_config(d.__getitem__).viewer == ViewerConfig()
    shipped = yaml.safe_load((REPO / "config" / "mapper.yaml").read_text())["nerf_mapper"]["ros__parameters"]
    assert shipped["viewer"]["port"] == 0
    demo = yaml.safe_load(_write_params(tmp_path, tmp_path, "rgb", 8080).read_text())["nerf_mapper"]
    assert demo["ros__parameters"]["viewer"]["port"] == 8080  # the README demo serves it


# ------------------------------------------------------------------------------------------------ renders
def test_viewer_coalesces_a_camera_flood_into_one_render_worker_while_training_goes_on(viewer_map, tiny_scene,
                                                                                         tmp_path):
    mapper = open_viewer_map(viewer_map, tiny_scene, training=True)
    viewer = Viewer(mapper, ViewerConfig(port=0, refresh_period_s=0.0), output_dir=tmp_path)
    rendered, active, lock = [], [0, 0], threading.Lock()
    orig = mapper.views.render_view

    def render_view(T, w=0, h=0, **kw):  # records what was rendered and how many renders overlapped
        with lock:
            active[0] += 1
            active[1] = max(active[1], active[0])
        try:
            return orig(T, w, h, **kw)
        finally:
            with lock:
                active[0] -= 1
                rendered.append((np.array(T), w, h))

    mapper.views.render_view = render_view
    client = FakeClient(7)
    try:
        _started(viewer)
        step0 = mapper.trainer.step_count
        n_threads, per_thread = 4, 400
        flood_start = time.monotonic()

        def flood(k):
            for i in range(per_thread):
                viewer.on_camera(client, _orbit_pose(0.002 * (k * per_thread + i)), 1.0, 16 / 9)
                time.sleep(0.006)  # ~650 camera messages a second in all (a browser sends about 60)

        threads = [threading.Thread(target=flood, args=(k,)) for k in range(n_threads)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        flood_s = time.monotonic() - flood_start
        final = _orbit_pose(1.0)
        viewer.on_camera(client, final, 1.0, 16 / 9)
        v = viewer._views[7]
        _wait(lambda: v.done_seq == v.seq and v.done_quality == "refined" and client.images, 60)
        steps_after = mapper.trainer.step_count
    finally:
        viewer.stop()
        mapper.stop()
    st = viewer.stats()
    print(f"flood: {n_threads * per_thread + 1} camera updates in {flood_s:.1f} s -> {len(rendered)} renders, "
          f"{len(client.images)} images sent; training {step0} -> {steps_after} steps; {st}")
    assert st["camera_updates"] == n_threads * per_thread + 1
    assert len(rendered) <= 4 + 4 * flood_s  # coalesced: a few renders, not one per camera message
    assert st["camera_coalesced"] > n_threads * per_thread * 0.9
    assert active[1] == 1  # one render at a time (one worker)
    assert np.allclose(rendered[-1][0], final)  # the newest camera is the one rendered last, refined
    assert rendered[-1][1] == viewer.cfg.still_width
    coarse = [w for _, w, _ in rendered[:-1]]
    assert coarse and max(coarse) <= viewer.cfg.moving_width  # moving: coarse
    img = client.images[-1][1]
    assert abs(img.shape[1] / img.shape[0] - 16 / 9) < 0.05 and img.std() > 5  # the window's aspect, a picture
    want = matched_fov(camera_tan(mapper.intake.intrinsics, 16 / 9), 16 / 9)
    assert client.camera.fov == pytest.approx(want)  # the browser's field of view was set to the camera's
    assert steps_after > step0  # training went on during the flood
    assert not [t for t in threading.enumerate() if t.name.startswith("nerf_viewer")]  # stopped


def test_viewer_drops_renders_for_browsers_that_left_and_bad_cameras(viewer_map, tiny_scene):
    mapper = open_viewer_map(viewer_map, tiny_scene)
    viewer = Viewer(mapper, ViewerConfig(port=0, refresh_period_s=0.0))
    orig = mapper.views.render_view
    leaving = FakeClient(1)

    def render_view(T, w=0, h=0, **kw):  # the browser disconnects while its view renders
        out = orig(T, w, h, **kw)
        viewer.on_disconnect(leaving.client_id)
        return out

    try:
        _started(viewer)
        mapper.views.render_view = render_view
        viewer.on_camera(leaving, _orbit_pose(0.3), 1.0, 4 / 3)
        _wait(lambda: viewer.stats().get("dropped_disconnected", 0) >= 1, 30)
        assert not leaving.images and 1 not in viewer._views  # the result was dropped, nothing sent
        mapper.views.render_view = orig
        broken = FakeClient(2, fail=True)  # sending fails (the socket closed before the disconnect event)
        viewer.on_camera(broken, _orbit_pose(0.5), 1.0, 4 / 3)
        _wait(lambda: viewer.stats().get("dropped_send_failed", 0) >= 1, 30)
        for bad in (np.full((4, 4), np.nan), np.eye(3)):
            viewer.on_camera(FakeClient(3), bad, 1.0, 4 / 3)
        viewer.on_camera(FakeClient(3), np.eye(4), float("nan"), 4 / 3)
        assert viewer.stats()["camera_invalid"] == 3 and 3 not in viewer._views
        ok = FakeClient(4)  # the worker is alive and serves the next browser
        viewer.on_camera(ok, _orbit_pose(0.7), 1.0, 4 / 3)
        _wait(lambda: len(ok.images) >= 1, 30)
        assert viewer._threads[0].is_alive()
    finally:
        viewer.stop()
        mapper.stop()
    counts = mapper.input_stats()
    assert counts["viewer_render_dropped"] >= 2 and counts["viewer_camera_invalid"] == 3  # in ~/input_stats too


# ------------------------------------------------------------------------------------------------ the panel
def test_viewer_query_export_save_and_scene(viewer_map, tiny_scene, tmp_path):
    from nerf_mapping.mapping.map_io import load_map

    mapper = open_viewer_map(viewer_map, tiny_scene)
    viewer = Viewer(mapper, ViewerConfig(port=0), output_dir=tmp_path)
    try:
        _started(viewer)
        _wait(lambda: mapper.semantics._field_of is mapper.trainer, 60)  # the language field restored
        scene = viewer.server.scene
        # the scene: one frustum per keyframe, both paths, the current camera; the status
        n_kf = len(mapper.trainer.frames)
        viewer.update_scene()
        for name in ("/keyframes", "/paths/odom", "/paths/refined", "/current_camera"):
            assert scene.get_handle_by_name(name) is not None, name
        assert viewer._scene_state["keyframes"].shape == (n_kf, 4, 4)
        text = viewer.status_text()
        assert f"**keyframes** {n_kf}" in text and "**steps** 80" in text
        # queries: control characters stripped, huge and empty ones refused (counted), nothing shown for those
        answer = viewer.run_query("  flo\x00or\x1b ")
        assert answer.startswith("'floor':"), answer
        assert viewer.last_query is not None and len(viewer.last_query.xyz) > 0
        assert scene.get_handle_by_name("/query") is not None
        first = viewer.last_query
        for bad in ("x" * 5000, "y" * 201, "\x00\x07", ""):
            assert viewer.run_query(bad).startswith("query refused")
        assert viewer.last_query is first and viewer.stats()["queries_refused"] == 4
        assert mapper.input_stats()["viewer_query_refused"] == 4
        # buttons: one action at a time (a second one is refused while the first runs)
        assert viewer.submit("save", viewer.save_map)
        assert not viewer.submit("export", viewer.export_mesh) or viewer._busy is None
        _wait(lambda: viewer._busy is None, 60)
        saved = list(tmp_path.glob("map_*.pt"))
        assert len(saved) == 1 and "saved" in viewer.message
        tr, info = load_map(saved[0])
        assert len(tr.frames) == n_kf and len(info) == n_kf
        viewer.cfg.max_mesh_triangles = 2000
        viewer.export_mesh()
        assert list(tmp_path.glob("mesh_*.ply")) and viewer.message.startswith("mesh:")
        assert scene.get_handle_by_name("/mesh") is not None and len(viewer.last_mesh[1]) <= 2000
        # layers toggle
        viewer.gui["show_query"].value = False
        viewer._toggle("show_query", ("query",))
        assert viewer.handles["query"].visible is False
    finally:
        viewer.stop()
        mapper.stop()


# ------------------------------------------------------------------------------------------------ nerf-mapping view
def test_view_opens_a_train_checkpoint_and_refuses_other_files(viewer_map, tiny_scene, tmp_path):
    """A ``nerf-mapping train`` checkpoint (Trainer.save with the training cameras, no keyframe records) opens too:
    its training cameras are the frustums, their intrinsics the render's."""
    import torch

    from nerf_mapping.cli.view import configs
    from nerf_mapping.mapping.map_io import load_map

    tr, _ = load_map(viewer_map)
    cams = [tr.frames.camera(i) for i in tr.frames.frame_ids()]
    ckpt = tmp_path / "checkpoint.pt"
    tr.save(ckpt, extra={"train_c2w": torch.stack([c.c2w[0] for c in cams]),  # as training.offline.checkpoint_extra
                         "train_intrinsics": torch.stack([torch.cat([c.fx, c.fy, c.cx, c.cy]) for c in cams]),
                         "train_size": torch.stack([torch.cat([c.width, c.height]) for c in cams])})
    mapper = open_viewer_map(ckpt, tiny_scene)
    try:
        assert len(mapper.trainer.frames) == 0 and mapper.intake.intrinsics["width"] == int(cams[0].width[0])
        viewer = Viewer(mapper)
        poses, tan, cur = viewer.keyframe_poses()
        assert poses.shape == (len(cams), 4, 4) and cur is not None
        out = mapper.views.render_view(cur, 48, 36)
        assert out["rgb"].std() > 5
    finally:
        mapper.stop()
    with pytest.raises(ValueError, match="unknown parameter"):
        configs(None, ["no_such.parameter=1"])
    with pytest.raises(ValueError, match="viewer.port"):
        configs(None, ["viewer.port=abc"])
    cfg, vcfg = configs(None, ["viewer.still_width=200", "semantics.teacher=labels"])
    assert vcfg.still_width == 200 and cfg.semantics.teacher == "labels" and not cfg.training.enabled
    assert cfg.autosave_dir == ""
    junk = tmp_path / "junk.pt"
    junk.write_text("not a map")
    for path, what in ((tmp_path / "missing.pt", "not found"), (junk, "not a map or checkpoint")):
        r = subprocess.run([sys.executable, "-m", "nerf_mapping.cli", "view", "--checkpoint", str(path)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and what in r.stderr, r.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_and_stop(cmd: list[str], env=None, timeout: float = 120.0) -> tuple[str, str]:
    """Start ``cmd``, wait for the ``viewer: http://...`` line (stdout or stderr), GET the page, SIGINT it; returns
    (url, page)."""
    import re

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    found: list[str] = []

    def read():
        for line in proc.stdout:
            lines.append(line)
            m = re.search(r"viewer: (http://[\w.]+:\d+)", line)
            if m and not found:
                found.append(m.group(1))

    th = threading.Thread(target=read, daemon=True)
    th.start()
    try:
        _wait(lambda: found or proc.poll() is not None, timeout)
        assert found, "".join(lines)
        page = urllib.request.urlopen(found[0], timeout=10).read().decode("utf-8", "replace")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        th.join(5)
    assert rc == 0, "".join(lines)
    return found[0], page


def test_view_command_serves_a_saved_map(viewer_map, tiny_scene):
    port = _free_port()
    url, page = _serve_and_stop([sys.executable, "-m", "nerf_mapping.cli", "view", "--checkpoint", str(viewer_map),
                                 "--port", str(port), "--set", "semantics.teacher=labels",
                                 "--set", f"semantics.class_names={tiny_scene / 'labels.json'}"])
    assert url.endswith(f":{port}") or url.startswith("http://127.0.0.1:")
    assert "<html" in page.lower() and "viser" in page.lower()  # viser's own client, served offline


def test_node_serves_the_viewer_on_viewer_port(tmp_path):
    pytest.importorskip("rclpy")
    from test_mapper_node import ros_env

    port = _free_port()
    url, page = _serve_and_stop(
        [sys.executable, "-m", "nerf_mapping.ros.mapper_node", "--ros-args", "-p", f"viewer.port:={port}",
         "-p", f"output_dir:={tmp_path / 'out'}", "-p", "autosave_period_s:=0.0"], env=ros_env(tmp_path))
    assert "viser" in page.lower()
