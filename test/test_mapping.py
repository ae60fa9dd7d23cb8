"""The online mapper without DDS: images, camera info, odometry and static transforms in; keyframes, training,
refined poses, renders and a map file out. The node (test_mapper_node.py) runs the same object over DDS."""
from __future__ import annotations

import ast
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from nerf_mapping.mapping.extent import ExtentConfig
from nerf_mapping.mapping.keyframes import KeyframeConfig
from nerf_mapping.mapping.config import MapperConfig, OnlineTrainingConfig, SyncConfig
from nerf_mapping.mapping.mapper import OnlineMapper

PKG = Path(__file__).resolve().parents[1] / "nerf_mapping"
ROS_MODULES = ("rclpy", "rosidl", "rosbag2_py", "launch", "launch_ros", "launch_testing", "tf2_ros", "cv_bridge",
               "message_filters", "nerf_mapping_interfaces", "builtin_interfaces", "rcl_interfaces")


def _feed(mapper: OnlineMapper, scene: Path, n_images: int | None = None) -> int:
    """Give the mapper what the node would: camera info, the odometry stream, the static extrinsic and the images
    (in time order, odometry first so that every image can be interpolated). Returns the images submitted."""
    from nerf_mapping.data import load_dataset

    data = load_dataset(scene, "all", 1)
    d = np.load(scene / "odometry.npz")
    cam = data.cameras
    mapper.intake.set_intrinsics({"fx": float(cam.fx[0]), "fy": float(cam.fy[0]), "cx": float(cam.cx[0]),
                                  "cy": float(cam.cy[0]), "width": int(cam.width[0]), "height": int(cam.height[0]),
                                  "distortion": [0.0] * 6, "model": 0}, "camera_optical")
    mapper.intake.add_static_transform("base_link", "camera_optical", d["extrinsic_base_to_camera_optical"])
    for s, T in zip(d["odom_stamps_ns"], d["odom_noisy"]):
        assert mapper.intake.add_odometry(int(s), "odom", T)
    stamps = d["image_stamps_ns"][:n_images]
    for s, img in zip(stamps, data.images):
        assert mapper.intake.submit_image(int(s), "camera_optical", img.numpy(), lambda a: a)
    return len(stamps)


def _config(**training) -> MapperConfig:
    return MapperConfig(scene_box="auto", keyframe=KeyframeConfig(min_translation=0.03, min_rotation_deg=3.0),
                        sync=SyncConfig(wait_s=0.2),
                        training=OnlineTrainingConfig(target_samples_per_step=4096, **training))


def _wait(cond, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.05)


def test_mapper_ingests_trains_refines_and_round_trips_its_map(tiny_scene, tmp_path):
    renders = []
    mapper = OnlineMapper(_config(max_steps=60), on_render=lambda rgb, stamp: renders.append((rgb.shape, stamp)))
    mapper.cfg.render_period_s = 0.5
    mapper.start()
    try:
        n = _feed(mapper, tiny_scene)
        _wait(lambda: mapper.intake.queue_length == 0 and mapper.trainer.step_count >= 60)
    finally:
        mapper.stop()
    stats = mapper.input_stats()
    kf = stats["keyframes"]
    # the automatic extent was fixed from the first keyframes and holds every camera's path
    ext = mapper.extent
    assert mapper.extent_ready and ext is not None and mapper.trainer.scene.unbounded
    lo, hi = np.array(mapper.trainer.scene.scene_box)
    centres = np.stack([k.T_odom_cam[:3, 3] for k in mapper.keyframes.info.values()])
    assert ((centres > lo) & (centres < hi)).all()
    assert stats["images_received"] == n and 5 <= kf <= n
    assert stats["images_dropped"] == 0  # every image had odometry around it
    assert sum(v for k, v in stats.items() if k.startswith("keyframe_")) == n  # each image was decided on
    assert stats["odom_received"] > n
    st = mapper.status()
    assert st["steps"] == 60 and st["keyframes"] == kf and np.isfinite(st["loss"]) and st["psnr"] > 10.0
    # refined poses: one per keyframe, map->odom a rigid transform near identity (the drift of a short sequence)
    odom_path, refined_path, T_map_odom = mapper.pose_state()
    assert len(odom_path) == len(refined_path) == kf
    assert np.allclose(T_map_odom[:3, :3] @ T_map_odom[:3, :3].T, np.eye(3), atol=1e-6)
    assert np.linalg.norm(T_map_odom[:3, 3]) < 0.5
    assert np.allclose(mapper.drift_estimate(), T_map_odom)
    assert renders and renders[-1][0][1] == 96  # the periodic render: 160 px wide, at most the keyframe width
    assert mapper.views.render_cost.seconds_per_ray is None  # interleaved with training: not a render's own cost
    view = mapper.views.render_view(refined_path[-1][1] @ np.load(tiny_scene / "odometry.npz")[
        "extrinsic_base_to_camera_optical"], 48, 36)
    assert view["rgb"].shape == (36, 48, 3) and view["rgb"].dtype == np.uint8 and view["depth"].shape == (36, 48)
    assert mapper.views.render_cost.seconds_per_ray > 0  # RenderView (training paused) is timed
    # a map that renders slowly (say 0.5 ms a ray) answers a 1 s budget at a smaller size, upsampled to the request
    pose = refined_path[-1][1] @ np.load(tiny_scene / "odometry.npz")["extrinsic_base_to_camera_optical"]
    mapper.views.render_cost.seconds_per_ray = 5e-4
    small = mapper.views.render_view(pose, 96, 72)
    rw, rh = small["rendered_size"]
    assert 32 <= rw < 96 and rw * rh <= 0.7 * mapper.cfg.render_budget_s / 5e-4 and abs(rw / rh - 96 / 72) < 0.1
    assert small["rgb"].shape == (72, 96, 3) and small["depth"].shape == (72, 96)
    mapper.cfg.render_budget_s = 0.0  # budget off: the full size
    full = mapper.views.render_view(pose, 96, 72)
    assert full["rendered_size"] == (96, 72)
    # the upsampled picture is the same scene: close to the full render (a young map is smooth)
    assert np.abs(small["rgb"].astype(float) - full["rgb"].astype(float)).mean() < 12
    # a view far costlier than predicted stops at its deadline after the coarsest complete lattice (every 4th pixel
    # of every 4th row: 24x18 here) and is upsampled from it, instead of running late
    mapper.cfg.render_budget_s, mapper.views.render_cost.seconds_per_ray = 0.01, 1e-9
    late = mapper.views.render_view(pose, 96, 72)
    assert late["rendered_size"] == (24, 18) and late["rgb"].shape == (72, 96, 3)
    assert np.abs(late["rgb"].astype(float) - full["rgb"].astype(float)).mean() < 15
    with pytest.raises(ValueError, match="within 8"):
        mapper.views.render_view(np.eye(4), 4, 4)

    # map round trip: a new mapper loads keyframes, poses and the field, and renders the same image
    path = mapper.save(tmp_path / "map.pt")
    assert path == {"keyframes": kf, "steps": 60}
    other = OnlineMapper(_config())
    assert other.load(tmp_path / "map.pt") == {"keyframes": kf, "steps": 60}
    assert len(other.keyframes.history) == kf and other.trainer.step_count == 60
    a, b = mapper.views.render_latest_keyframe(), other.views.render_latest_keyframe()
    assert a[1] == b[1] and np.abs(a[0].astype(int) - b[0].astype(int)).max() <= 1
    _, refined_b, T_b = other.pose_state()
    assert np.allclose(T_b, T_map_odom, atol=1e-5)
    assert np.allclose(np.stack([T for _, T in refined_b]), np.stack([T for _, T in refined_path]), atol=1e-5)
    other.step()  # and it keeps training
    assert other.trainer.step_count == 61
    # a running mapper (its training thread waiting for keyframes) continues on a loaded map, up to its step cap
    live = OnlineMapper(_config(max_steps=64))
    live.start()
    try:
        live.load(tmp_path / "map.pt")
        _wait(lambda: live.trainer.step_count >= 64)
        time.sleep(0.3)
    finally:
        live.stop()
    assert live.trainer.step_count == 64 and not live.training_active


def test_mapper_counts_and_drops_bad_inputs(tiny_scene):
    mapper = OnlineMapper(_config(enabled=False))
    img = np.zeros((72, 96, 3), np.uint8)
    assert not mapper.intake.add_odometry(10, "elsewhere", np.eye(4))  # another frame
    assert mapper.intake.add_odometry(100, "odom", np.eye(4))
    assert not mapper.intake.add_odometry(50, "odom", np.eye(4))  # stamp backwards
    assert mapper.intake.submit_image(1_000, "cam", img, lambda a: a)
    assert not mapper.intake.submit_image(1_000, "cam", img, lambda a: a)  # not newer than the previous image
    mapper.intake.reject_image("invalid", "bad encoding")
    c = mapper.input_stats()
    assert c["odom_wrong_frame"] == 1 and c["odom_stamp_backwards"] == 1 and c["odom_received"] == 1
    assert c["image_stamp_backwards"] == 1 and c["image_invalid"] == 1
    assert c["images_received"] == 3 and c["images_dropped"] == 2
    # no camera info: the queued image waits sync.wait_s, then is dropped with its reason
    item = (1_000, "cam", img, lambda a: a, time.monotonic() - 1.0)
    assert mapper.process_image(item) and mapper.input_stats()["image_no_camera_info"] == 1
    with pytest.raises(ValueError, match="capacity"):
        OnlineMapper(MapperConfig(keyframe=KeyframeConfig(capacity=1)))
    with pytest.raises(ValueError, match="scene_box"):
        OnlineMapper(MapperConfig(scene_box=(0, 0, 0, 1, 1)))
    with pytest.raises(ValueError, match="max > min"):
        OnlineMapper(MapperConfig(scene_box="[0, 0, 0, 1, -1, 1]"))
    with pytest.raises(ValueError, match="quaternion"):
        OnlineMapper(MapperConfig(extrinsic_base_camera=(0, 0, 0, 0, 0, 0, 2)))


def test_mapper_starts_intake_afresh_when_the_player_loops(tiny_scene):
    """A looping (or restarted) bag player: every stamp jumps back to the start of the sequence. The mapper detects
    the jump once, clears its odometry buffer and goes on taking the replayed images (no image is dropped as
    'stamp backwards'); the keyframes of the first pass are kept, and the replayed views are revisits: the store
    holds one pass (at most 10 % more)."""
    cfg = _config(enabled=False)
    assert cfg.keyframe.revisit_threshold > 0  # the revisit test (on by default)
    mapper = OnlineMapper(cfg)
    mapper.start()

    def decided() -> int:
        return sum(v for k, v in mapper.input_stats().items() if k.startswith("keyframe_"))

    try:
        n = _feed(mapper, tiny_scene)
        _wait(lambda: mapper.intake.queue_length == 0 and decided() == n)
        kf_first = mapper.input_stats()["keyframes"]
        _feed(mapper, tiny_scene)  # the bag again
        _wait(lambda: mapper.intake.queue_length == 0 and decided() == 2 * n)
    finally:
        mapper.stop()
    stats = mapper.input_stats()
    assert stats["time_jump_back"] == 1
    assert stats["images_received"] == 2 * n and stats["images_dropped"] == 0
    assert stats.get("odom_stamp_backwards", 0) == 0
    assert kf_first > 0 and kf_first <= stats["keyframes"] <= 1.1 * kf_first
    assert stats["keyframe_revisit"] > 0


def _dotted_fields(cfg, prefix=""):
    """Dotted names of every parameter field of a config dataclass, walked here independently of config.params."""
    import dataclasses

    for f in dataclasses.fields(cfg):
        if not f.metadata.get("param", True):
            continue
        v = getattr(cfg, f.name)
        yield from (_dotted_fields(v, f"{prefix}{f.name}.") if dataclasses.is_dataclass(v) else [prefix + f.name])


def test_ros_parameters_are_the_config_dataclass_fields():
    """The node declares exactly the fields of ``NodeConfig`` and ``MapperConfig`` (dotted paths), each with the
    field's docstring as its description, and its mapper config built from the declared defaults is
    ``MapperConfig()`` (the node adds only the autosave directory)."""
    import dataclasses

    from nerf_mapping.ros.params import NodeConfig, defaults, mapper_config, node_config, parameters

    params = parameters()
    names = [p.name for p in params]
    assert len(names) == len(set(names))
    assert set(names) == set(_dotted_fields(NodeConfig())) | set(_dotted_fields(MapperConfig()))
    assert "sync.wait_s" in names and "keyframe.capacity" in names and "autosave_dir" not in names
    undocumented = [p.name for p in params if len(p.description) < 10]
    assert not undocumented, undocumented
    cfg = mapper_config()
    assert cfg.autosave_dir == str((Path(defaults()["output_dir"]).resolve() / "autosave"))  # the node's choice
    assert dataclasses.replace(cfg, autosave_dir="") == MapperConfig()
    assert node_config(defaults().__getitem__) == NodeConfig()


def test_shipped_parameter_file_is_generated_from_the_dataclasses():
    """``config/mapper.yaml`` is the generated file (regenerate: ``nerf-mapping node --write-params
    config/mapper.yaml``): same text, and read back as ROS would it gives the defaults."""
    import dataclasses

    import yaml

    from nerf_mapping.ros.params import defaults, mapper_config, parameters_yaml

    path = PKG.parent / "config" / "mapper.yaml"
    assert path.read_text() == parameters_yaml(), "config/mapper.yaml is stale: nerf-mapping node --write-params"
    r = subprocess.run([sys.executable, "-m", "nerf_mapping.cli", "node", "--write-params", "-"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout == parameters_yaml(), r.stderr
    shipped = yaml.safe_load(path.read_text())["nerf_mapper"]["ros__parameters"]

    def flat(d, prefix=""):
        for k, v in d.items():
            yield from (flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [(prefix + k, v)])

    shipped = dict(flat(shipped))
    assert shipped == defaults()
    assert all(type(v) is type(defaults()[k]) for k, v in shipped.items())  # 1.0 stays a float for ROS
    assert dataclasses.replace(mapper_config(shipped.__getitem__), autosave_dir="") == MapperConfig()


def test_parameter_overrides_convert_and_refuse():
    """``--set`` (benchmark online) and the node reach the same fields by the same names, values converted to the
    field's type; unknown names and wrong types are refused with the name."""
    from nerf_mapping.config.params import apply_sets

    cfg = MapperConfig()
    apply_sets(cfg, ["scene_box=[-3,-2.5,-0.2,3,2.5,3]", "sync.wait_s=2", "keyframe.capacity=50",
                     "training.overrides=[field.appearance_dim=16]", "semantics.negatives=[a, b]",
                     "training.pose_refinement=off"])
    assert cfg.scene_box == (-3.0, -2.5, -0.2, 3.0, 2.5, 3.0) and cfg.sync.wait_s == 2.0
    assert isinstance(cfg.sync.wait_s, float) and cfg.keyframe.capacity == 50
    assert cfg.training.overrides == ("field.appearance_dim=16",) and cfg.semantics.negatives == ("a", "b")
    v = cfg.validated()
    assert v.training.pose_refinement == "off" and v.scene_box == cfg.scene_box
    assert MapperConfig(scene_box="auto").validated().scene_box == "auto"
    for bad, match in (("sync.nope=1", "unknown parameter 'sync.nope'"), ("odom_buffer_s=3", "unknown"),
                       ("keyframe=1", "unknown"), ("keyframe.capacity=1.5", "keyframe.capacity: expected int"),
                       ("near=fast", "near: expected float"), ("autosave_dir=/tmp", "unknown")):
        with pytest.raises(ValueError, match=match):
            apply_sets(MapperConfig(), [bad])


def test_core_imports_no_ros():
    """Only ``nerf_mapping/ros/`` may import rclpy or message packages, and only ``ros/`` and ``cli/`` (the layers
    on top) may import ``nerf_mapping.ros``; the mapper and the benchmarks import without ROS."""
    offenders = []
    for f in PKG.rglob("*.py"):
        top_dir = f.relative_to(PKG).parts[0]
        if top_dir == "ros":
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            if isinstance(node, ast.ImportFrom) and node.module == "nerf_mapping":
                names += [f"nerf_mapping.{a.name}" for a in node.names]
            for name in names:
                top = name.split(".")[0]
                if top in ROS_MODULES or top.endswith("_msgs") or top.endswith("_srvs"):
                    offenders.append(f"{f.relative_to(PKG)}: {name}")
                if top_dir != "cli" and (name == "nerf_mapping.ros" or name.startswith("nerf_mapping.ros.")):
                    offenders.append(f"{f.relative_to(PKG)}: {name} (only ros/ and cli/ may)")
    assert not offenders, offenders
    block = ("import sys, importlib.abc\n"
             "class Block(importlib.abc.MetaPathFinder):\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             f"        if name.split('.')[0] in {ROS_MODULES!r} or name.split('.')[0].endswith('_msgs'):\n"
             "            raise ImportError('blocked: ' + name)\n"
             "sys.meta_path.insert(0, Block())\n"
             "import nerf_mapping.mapping, nerf_mapping.mapping.mapper, nerf_mapping.benchmarks.drift\n"
             "import nerf_mapping.benchmarks.online\n"
             "import nerf_mapping.ros.params\n"
             "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_trainer_extension_point_trains_an_extra_parameter_group(tiny_scene):
    """A third extension plugs in without touching ``Trainer.step``: its loss is added, its optimiser steps, its
    state is saved and loaded under its name."""
    from nerf_mapping.config.presets import offline_config
    from nerf_mapping.data import load_dataset
    from nerf_mapping.extension import TrainerExtension
    from nerf_mapping.training.offline import build_trainer
    from nerf_mapping.training.trainer import Trainer

    class Bias(TrainerExtension):
        name = "bias"

        def __init__(self):
            super().__init__()
            self.b = torch.nn.Parameter(torch.zeros(1))
            self.seen = 0

        def make_optimizer(self):
            return torch.optim.SGD([self.b], lr=0.1)

        def before_step(self, ctx):
            self.seen = ctx.step + 1

        def loss(self, frame_ids, out, batch=None):
            return (self.b - 1.0).pow(2).sum()

    data = load_dataset(tiny_scene, "train", 1)
    cfg = offline_config(data, overrides=["target_samples_per_step=2048"])
    tr = build_trainer(data, cfg)
    ext = Bias()
    tr.add_extension(ext)
    with pytest.raises(ValueError, match="exists"):
        tr.add_extension(Bias())
    for _ in range(5):
        tr.step()
    assert ext.seen == 5 and 0.5 < float(ext.b.detach()) < 1.0  # SGD towards 1
    tr.save(tiny_scene.parent / "ext.pt")
    st = torch.load(tiny_scene.parent / "ext.pt", weights_only=True)
    assert torch.equal(st["bias"]["b"], ext.b.detach()) and st["bias_optimizer"] is not None
    tr2 = Trainer.load(tiny_scene.parent / "ext.pt", frames=tr.frames)
    assert tr2.step_count == 5 and [e.name for e in tr2.extensions] == ["pose", "appearance", "range"]
    restored = Bias()
    tr2.add_extension(restored)  # the saved state and optimiser state come back when the extension is added
    assert torch.equal(restored.b.detach(), ext.b.detach())


def test_mapper_semantics_learn_from_label_images_and_survive_a_map_file(tiny_scene, tmp_path):
    """The mapper's language field (labels teacher): label images matched to keyframes by stamp, one teacher map per
    keyframe (a keyframe whose label image never comes is counted), text queries on the cached surface points, a
    rendered keyframe's relevancy high on the queried class, and the same answer from a reloaded map, whose candidates
    are warmed up before the first query."""
    import dataclasses
    import json

    from PIL import Image

    from nerf_mapping.export.mesh import snapshot, training_views
    from nerf_mapping.mapping.semantics import SemanticsConfig
    from nerf_mapping.semantics.labels import fit_labels
    from nerf_mapping.semantics.query import QueryConfig, relevancy_image

    sem = SemanticsConfig(teacher="labels", class_names=str(tiny_scene / "labels.json"), stride=2, label_wait_s=0.5,
                          num_points=20000, warm_after_steps=0)  # candidates when queried: from the final map
    cfg = _config(max_steps=200)
    cfg.semantics = sem
    off = OnlineMapper(_config(enabled=False))
    with pytest.raises(ValueError, match="semantics are off"):
        off.semantics.query("floor")
    mapper = OnlineMapper(cfg)
    mapper.start()
    try:
        with pytest.raises(ValueError):
            mapper.semantics.query("floor")  # teacher loading, or no keyframes yet
        frames = json.loads((tiny_scene / "transforms.json").read_text())["frames"]
        stamps = np.load(tiny_scene / "odometry.npz")["image_stamps_ns"]
        labels = {int(s): np.asarray(Image.open(tiny_scene / f["semantic_file_path"])) for s, f in zip(stamps, frames)}
        missing = int(stamps[5])
        for s, lab in labels.items():
            if s != missing:
                mapper.semantics.add_labels(s, lab)
        _feed(mapper, tiny_scene)
        _wait(lambda: mapper.trainer.step_count >= 200 and not mapper.intake.queue_length, 300)
        _wait(lambda: mapper.semantics.maps_built + mapper.intake.counts["semantics_no_labels"] >= len(mapper.trainer.frames))
        assert mapper.semantics.error is None
        assert mapper.intake.counts["semantics_no_labels"] <= 1  # the frame without labels (if it became a keyframe)
        assert mapper.semantics.maps_built >= len(mapper.trainer.frames) - 1
        for bad in ("", "x" * 2000):
            with pytest.raises(ValueError):
                mapper.semantics.query(bad)
        with pytest.raises(ValueError, match="threshold"):
            mapper.semantics.query("floor", threshold=float("nan"))
        floor, cands = mapper.semantics.query("floor")
        assert 0 < len(floor.xyz) <= floor.n_candidates and floor.teacher == "labels"
        again, cands2 = mapper.semantics.query("floor", threshold=0.9)
        assert cands2 is cands and len(again.xyz) <= len(floor.xyz)  # cached candidates, a stricter threshold
        # a keyframe's rendered relevancy to "floor" is high on its floor pixels
        tr = mapper.trainer
        fid = tr.frames.frame_ids()[len(tr.frames) // 2]
        stamp = mapper.keyframes.info[fid].stamp_ns
        views = training_views(tr)
        j = tr.frames.frame_ids().index(fid)
        from nerf_mapping.semantics.query import language_snapshot

        r = relevancy_image(snapshot(tr), language_snapshot(tr), mapper.semantics.teacher, views, j, "floor",
                            QueryConfig().validate(), min_opacity=0.0)
        lab = fit_labels(labels[stamp], r.shape[1], r.shape[0])
        on, other = r[torch.from_numpy(lab == 1)], r[torch.from_numpy((lab != 1) & (lab != 0))]
        print(f"floor relevancy: floor pixels {float(on.mean()):.2f}, others {float(other.mean()):.2f}")
        assert float(on.mean()) > float(other.mean()) + 0.2
        img, img_stamp = mapper.semantics.relevancy_view("floor", width=48)
        assert img.shape == (36, 48, 3) and img.dtype == np.uint8 and img_stamp in labels
        path = tmp_path / "map.pt"
        mapper.save(path)
    finally:
        mapper.stop()
    warm = dataclasses.replace(sem, warm_after_steps=100)  # the loaded map (200 steps) warms its candidates up
    other = OnlineMapper(MapperConfig(training=OnlineTrainingConfig(enabled=False), semantics=warm))
    other.start()
    try:
        other.load(path)
        _wait(lambda: other.semantics._field_of is other.trainer, 60)
        _wait(lambda: other.semantics._cands is not None, 120)  # computed before any query
        ext = other.semantics.check_ready(other.trainer)
        assert len(ext.targets) >= len(other.trainer.frames) - 1  # teacher maps rebuilt from the saved class ids
        reloaded, _ = other.semantics.query("floor")
        assert reloaded.n_candidates == floor.n_candidates and len(reloaded.xyz) == len(floor.xyz)
    finally:
        other.stop()


def test_mapper_autosaves_and_resumes_skipping_torn_saves(tiny_scene, tmp_path):
    """Autosaves while mapping (atomic, checksummed, two kept); a resumed mapper has the saved keyframes, steps and
    renders; a torn or corrupted newer save is skipped for the previous one; an unwritable directory is counted and
    retried while mapping goes on."""
    import logging

    from nerf_mapping.mapping import autosave

    cfg = _config(max_steps=60)
    cfg.autosave_dir, cfg.autosave_period_s = str(tmp_path / "autosave"), 0.5
    mapper = OnlineMapper(cfg)
    mapper.start()
    try:
        _feed(mapper, tiny_scene)
        _wait(lambda: mapper.trainer.step_count >= 60, 300)
        _wait(lambda: mapper.autosaver.last is not None and mapper.autosaver.last[1] >= 60, 60)
    finally:
        mapper.stop()
    files = autosave.saves(tmp_path / "autosave")
    assert 1 <= len(files) <= 2 and all(autosave.check(p) is None for p in files)
    newest = files[0]
    saved = (len(mapper.trainer.frames), int(mapper.trainer.step_count))
    ref = mapper.views.render_latest_keyframe(48)[0]

    def resumed(log=None):
        c = _config(enabled=False)
        c.autosave_dir, c.resume = cfg.autosave_dir, True
        m = OnlineMapper(c, logger=log)
        m.start()
        m.stop()
        return m

    m = resumed()
    assert (len(m.trainer.frames), int(m.trainer.step_count)) == saved
    assert np.array_equal(m.views.render_latest_keyframe(48)[0], ref)

    # a newer save torn mid-write (digest of the full file, bytes cut) and one whose digest never came: both skipped
    data = newest.read_bytes()
    torn = newest.with_name(f"autosave_{999999:09d}_1.pt")
    torn.write_bytes(data[: len(data) // 2])
    torn.with_name(torn.name + ".sha256").write_text(autosave.file_digest(newest) + "\n")
    newest.with_name(f"autosave_{999998:09d}_1.pt").write_bytes(data)
    records = []

    class Log(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    log = logging.getLogger("test_autosave")
    log.addHandler(Log())
    m = resumed(log)
    assert (len(m.trainer.frames), int(m.trainer.step_count)) == saved
    assert any("checksum mismatch" in r for r in records) and any("did not complete" in r for r in records), records

    # disk trouble: the directory cannot be created; mapping goes on, the failure is counted, saves stay intact
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    cfg2 = _config(max_steps=20)
    cfg2.autosave_dir, cfg2.autosave_period_s = str(blocker / "autosave"), 0.3
    bad = OnlineMapper(cfg2)
    bad.start()
    try:
        _feed(bad, tiny_scene, n_images=8)
        _wait(lambda: bad.intake.counts["autosave_failed"] >= 1, 120)
        _wait(lambda: bad.trainer.step_count >= 20, 120)
    finally:
        bad.stop()
    assert autosave.check(newest) is None


def test_mapper_extent_given_box_or_fixed_after_the_bootstrap_timeout(tiny_scene):
    from nerf_mapping.data import load_dataset

    data = load_dataset(tiny_scene, "all", 1)
    cam = data.cameras[0:1]
    img = data.images[0].numpy()
    # a given box is the field's box, with no waiting
    box = (-3.0, -2.5, -0.2, 3.0, 2.5, 3.0)
    given = OnlineMapper(MapperConfig(scene_box=box, training=OnlineTrainingConfig(enabled=False)))
    assert given.extent_ready and given.extent is None
    assert given.add_keyframe(img, np.eye(4), np.eye(4), 1, camera=cam) == 0
    assert np.allclose(np.concatenate(given.trainer.scene.scene_box), box)
    # automatic: keyframes are held back until bootstrap_keyframes arrive, or the timeout with fewer
    cfg = MapperConfig(scene_box="auto", training=OnlineTrainingConfig(enabled=False),
                       extent=ExtentConfig(bootstrap_keyframes=50, bootstrap_timeout_s=0.3))
    auto = OnlineMapper(cfg)
    auto.start()
    try:
        T1 = np.eye(4)
        T1[:3, 3] = [0.2, 0.0, 0.0]
        assert auto.add_keyframe(img, np.eye(4), np.eye(4), 1, camera=cam) == -1
        assert auto.add_keyframe(img, T1, T1, 2, camera=cam) == -1
        assert not auto.extent_ready and len(auto.trainer.frames) == 0 and auto.step() is None
        _wait(lambda: auto.extent_ready, timeout=10.0)
    finally:
        auto.stop()
    assert len(auto.trainer.frames) == 2 and sorted(auto.keyframes.info) == [0, 1]  # both entered, in order
    assert auto.extent.inner_half == pytest.approx(ExtentConfig().min_radius)  # 0.2 m of motion: the minimum
    assert auto.step() is not None and auto.trainer.step_count == 1


def test_cpu_meter_charges_each_thread_by_name():
    """The node's CPU by thread (:mod:`nerf_mapping.mapping.cpu`): a named thread that burns CPU is charged to its
    name (pool numbers dropped), once, also after it ended; time before the meter started is not counted."""
    import threading
    import time

    from nerf_mapping.mapping.cpu import CpuMeter, group_name

    assert group_name("ThreadPoolExecutor-0_1") == "ThreadPoolExecutor" and group_name("nerf_mapper_train") == \
        "nerf_mapper_train"
    t_end = time.thread_time() + 0.3
    while time.thread_time() < t_end:  # before the meter: not its time
        pass
    meter = CpuMeter()
    started = threading.Event()

    def burn():
        started.set()
        t = time.thread_time()
        while time.thread_time() - t < 0.4:
            pass

    th = threading.Thread(target=burn, name="burner-7")
    th.start()
    started.wait()
    time.sleep(0.2)
    meter.sample()  # while it runs
    th.join()
    meter.sample()  # after it ended (its task may linger in /proc a moment)
    cores = meter.cores()
    wall = time.monotonic() - meter.t0
    burnt = cores.get("burner", 0.0) * wall
    assert 0.1 < burnt < 0.5, cores  # its 0.4 s, at most once (sampled while running, at least 0.2 s of it)
    assert cores.get("main", 0.0) * wall < 0.2, cores  # the 0.3 s burnt before the meter started is not counted
    assert cores["total"] == pytest.approx(sum(v for k, v in cores.items() if k != "total"), abs=0.01)
