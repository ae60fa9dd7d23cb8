"""Tests of the built-in labeled demo scene generator (nerf_mapping.scene)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nerf_mapping.scene import (
    CLASSES,
    OdometryNoiseParams,
    SceneConfig,
    default_scene_dir,
    ensure_default_scene,
    generate_scene,
    is_complete_scene,
    read_labeled_ply,
    simulate_odometry_noise,
)
from nerf_mapping.cli.scene import add_cli
from nerf_mapping.geometry.rigid import (interpolate_poses, inv_pose, make_pose, matrix_from_quat_xyzw, so3_exp,
                                         so3_log)
from nerf_mapping.scene.sensors import DepthCameraConfig, LidarScans, depth_edges, depth_sigma, simulate_depth

# small but complete scene: fast enough for CI, every output present
SMALL = SceneConfig(seed=3, frames=12, width=80, height=60, odom_jitter_trans=0.01, odom_jitter_rot=0.004,
                    odom_trans_rw_sigma=0.05, odom_yaw_rw_sigma=0.01)
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scene") / "small"
    info = generate_scene(SMALL, out, progress=False)
    assert info.root == out and info.num_frames == SMALL.frames
    return out


@pytest.fixture(scope="module")
def transforms(scene) -> dict:
    return json.loads((scene / "transforms.json").read_text())


@pytest.fixture(scope="module")
def gt_mesh(scene):
    import open3d as o3d

    m = read_labeled_ply(scene / "mesh.ply")
    rs = o3d.t.geometry.RaycastingScene()
    rs.add_triangles(o3d.core.Tensor(m["vertices"]), o3d.core.Tensor(m["triangles"].astype(np.uint32)))
    return m, rs


@pytest.fixture(scope="module")
def bag_messages(scene):
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    out: dict[str, list] = {}
    conns = {}
    with Reader(scene / "bag") as reader:
        for conn in reader.connections:
            conns[conn.topic] = conn
        for conn, stamp, raw in reader.messages():
            out.setdefault(conn.topic, []).append((stamp, ts.deserialize_cdr(raw, conn.msgtype)))
    return out, conns


def _cast_frame(rs, frame: dict, t: dict):
    """Fresh ray cast of one frame from transforms.json: pixel-centre rays -> (t_hit, prim ids, z-scale)."""
    import open3d as o3d

    c2w_cv = np.asarray(frame["transform_matrix"]) @ GL_TO_CV
    cols, rows = np.meshgrid(np.arange(t["w"]) + 0.5, np.arange(t["h"]) + 0.5)
    d_cam = np.stack([(cols - t["cx"]) / t["fl_x"], (rows - t["cy"]) / t["fl_y"], np.ones_like(cols)], -1)
    d_cam = d_cam.reshape(-1, 3)
    norm = np.linalg.norm(d_cam, axis=1)
    d = (d_cam / norm[:, None]) @ c2w_cv[:3, :3].T
    rays = np.concatenate([np.broadcast_to(c2w_cv[:3, 3], d.shape), d], 1).astype(np.float32)
    hit = rs.cast_rays(o3d.core.Tensor(rays))
    return hit["t_hit"].numpy(), hit["primitive_ids"].numpy(), 1.0 / norm


# ---------------------------------------------------------------------------------------------------------------------


def test_layout_and_transforms(scene, transforms):
    for name in ("transforms.json", "metadata.json", "labels.json", "mesh.ply", "odometry.npz", "bag"):
        assert (scene / name).exists(), name
    assert is_complete_scene(scene, SMALL)
    t = transforms
    assert t["camera_model"] == "PINHOLE" and (t["w"], t["h"]) == (SMALL.width, SMALL.height)
    assert t["fl_x"] == pytest.approx(0.5 * SMALL.width / np.tan(np.deg2rad(SMALL.hfov_deg / 2)))
    assert len(t["frames"]) == SMALL.frames
    assert t["depth_unit_scale_factor"] == 0.001 and t["labels"] == "labels.json" and t["mesh"] == "mesh.ply"
    box = np.asarray(t["scene_box"])
    for f in t["frames"]:
        for key in ("file_path", "depth_file_path", "semantic_file_path", "sensor_depth_file_path"):
            assert (scene / f[key]).exists()
        c2w = np.asarray(f["transform_matrix"])
        assert np.allclose(c2w[:3, :3] @ c2w[:3, :3].T, np.eye(3), atol=1e-9)
        assert np.all(c2w[:3, 3] > box[0] + 0.3) and np.all(c2w[:3, 3] < box[1] - 0.3)  # inside the room
    labels = json.loads((scene / "labels.json").read_text())
    assert labels["0"] == "unknown"
    objects = set(labels.values()) - {"unknown", "floor", "wall", "ceiling"}
    assert len(objects) >= 6
    img = np.asarray(Image.open(scene / t["frames"][0]["file_path"]))
    assert img.shape == (SMALL.height, SMALL.width, 3) and img.dtype == np.uint8 and img.std() > 10
    ext = np.asarray(t["extrinsic_base_to_camera_optical"])
    meta = json.loads((scene / "metadata.json").read_text())
    assert np.allclose(ext, meta["extrinsic_base_to_camera_optical"])
    # optical z looks forward (base +x, pitched down), optical y points down
    assert ext[0, 2] > 0.9 and ext[2, 2] < 0 and ext[2, 1] < -0.9


def test_depth_matches_ray_hits(scene, transforms, gt_mesh):
    _, rs = gt_mesh
    for f in transforms["frames"][::3]:
        t_hit, _, zscale = _cast_frame(rs, f, transforms)
        depth = np.asarray(Image.open(scene / f["depth_file_path"])).astype(np.float64).reshape(-1) * 0.001
        expected = np.where(np.isfinite(t_hit), t_hit * zscale, 0.0)
        assert np.all(depth > 0)  # closed room: every pixel hits
        close = np.abs(depth - expected) <= 0.0006  # 16-bit mm quantisation + float noise
        assert close.mean() > 0.995, close.mean()  # a few silhouette pixels may flip between surfaces


def test_labels_agree_with_mesh(scene, transforms, gt_mesh):
    m, rs = gt_mesh
    # per-vertex ids agree with per-face ids (vertices are not shared between classes)
    assert np.all(m["vertex_class"][m["triangles"]] == m["face_class"][:, None])
    assert set(np.unique(m["face_class"]).tolist()) == set(CLASSES) - {0}
    seen = set()
    for f in transforms["frames"]:
        t_hit, prim, _ = _cast_frame(rs, f, transforms)
        lab = np.asarray(Image.open(scene / f["semantic_file_path"])).reshape(-1)
        expected = np.where(np.isfinite(t_hit), m["face_class"][np.where(np.isfinite(t_hit), prim, 0)], 0)
        assert (lab == expected).mean() > 0.995
        seen |= set(np.unique(lab).tolist())
    assert len(seen) >= 6


def test_mesh_readable_by_open3d(scene, gt_mesh):
    import open3d as o3d

    m, _ = gt_mesh
    o = o3d.io.read_triangle_mesh(str(scene / "mesh.ply"))
    assert np.allclose(np.asarray(o.vertices), m["vertices"], atol=1e-6)
    assert np.array_equal(np.asarray(o.triangles), m["triangles"])


def test_bag_reads_back(transforms, bag_messages):
    msgs, conns = bag_messages
    n, s = SMALL.frames, SMALL
    assert len(msgs["/camera/image_raw"]) == n and len(msgs["/camera/camera_info"]) == n
    assert len(msgs["/tf_static"]) == 1
    assert len(msgs["/odom"]) == len(msgs["/ground_truth/odometry"]) >= (n - 1) * s.odom_rate_hz / s.image_rate_hz + 1
    assert conns["/camera/image_raw"].msgtype == "sensor_msgs/msg/Image"
    assert conns["/odom"].msgtype == "nav_msgs/msg/Odometry"
    assert conns["/tf_static"].msgtype == "tf2_msgs/msg/TFMessage"
    qos = conns["/tf_static"].ext.offered_qos_profiles
    assert qos and qos[0].durability.name == "TRANSIENT_LOCAL"
    for (stamp, img), f in zip(msgs["/camera/image_raw"], transforms["frames"]):
        assert (img.width, img.height, img.encoding, img.step) == (s.width, s.height, "rgb8", 3 * s.width)
        assert img.header.frame_id == "camera_optical"
        hdr = img.header.stamp.sec * 10**9 + img.header.stamp.nanosec
        assert hdr == stamp == f["timestamp_ns"]
    for _, info in msgs["/camera/camera_info"]:
        k = np.asarray(info.k).reshape(3, 3)
        assert np.allclose(k, [[transforms["fl_x"], 0, transforms["cx"]], [0, transforms["fl_y"], transforms["cy"]],
                               [0, 0, 1]])
        assert np.allclose(np.asarray(info.p).reshape(3, 4)[:, :3], k) and info.distortion_model == "plumb_bob"
    for _, odo in msgs["/odom"][:3]:
        assert (odo.header.frame_id, odo.child_frame_id) == ("odom", "base_link")
    tf = msgs["/tf_static"][0][1].transforms[0]
    assert (tf.header.frame_id, tf.child_frame_id) == ("base_link", "camera_optical")
    q = tf.transform.rotation
    ext = make_pose(matrix_from_quat_xyzw([q.x, q.y, q.z, q.w]),
                    [tf.transform.translation.x, tf.transform.translation.y, tf.transform.translation.z])
    assert np.allclose(ext, transforms["extrinsic_base_to_camera_optical"], atol=1e-9)


def _tf_matrix(tf) -> np.ndarray:
    q, t = tf.transform.rotation, tf.transform.translation
    return make_pose(matrix_from_quat_xyzw([q.x, q.y, q.z, q.w]), [t.x, t.y, t.z])


def test_bag_range_sensor_topics(scene, transforms, bag_messages):
    """Depth images (16UC1 mm, the sensor_depth PNGs, image stamps), LiDAR sweeps (PointCloud2 x y z time, the
    lidar.npz sweeps) and the base_link -> lidar edge of /tf_static."""
    msgs, conns = bag_messages
    assert conns["/camera/depth/image_raw"].msgtype == "sensor_msgs/msg/Image"
    assert conns["/lidar/points"].msgtype == "sensor_msgs/msg/PointCloud2"
    depth = msgs["/camera/depth/image_raw"]
    assert len(depth) == SMALL.frames
    for (stamp, img), f in zip(depth, transforms["frames"]):
        assert (img.width, img.height, img.encoding, img.step, img.is_bigendian) == (
            SMALL.width, SMALL.height, "16UC1", 2 * SMALL.width, 0)
        assert img.header.frame_id == "camera_optical" and stamp == f["timestamp_ns"]
        assert img.header.stamp.sec * 10**9 + img.header.stamp.nanosec == stamp
        png = np.asarray(Image.open(scene / f["sensor_depth_file_path"]))
        assert np.array_equal(np.frombuffer(bytes(img.data), "<u2").reshape(png.shape), png)
    scans = LidarScans.load(scene / "lidar.npz")
    points = msgs["/lidar/points"]
    assert len(points) == len(scans) > 0
    for s, (stamp, pc) in enumerate(points):
        assert pc.header.frame_id == "lidar" and stamp == scans.stamps_ns[s]
        assert pc.header.stamp.sec * 10**9 + pc.header.stamp.nanosec == stamp
        assert [(f.name, f.offset, f.datatype, f.count) for f in pc.fields] == [
            ("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("time", 12, 7, 1)]
        assert (pc.height, pc.point_step, pc.is_bigendian, pc.is_dense) == (1, 16, False, True)
        rec = np.frombuffer(bytes(pc.data), "<f4").reshape(-1, 4)
        xyz, t = scans.scan(s)
        assert pc.width == len(rec) == len(xyz) and pc.row_step == 16 * pc.width
        assert np.array_equal(rec[:, :3], xyz) and np.array_equal(rec[:, 3], t)
    tfs = {tf.child_frame_id: tf for tf in msgs["/tf_static"][0][1].transforms}
    assert set(tfs) == {"camera_optical", "lidar"} and tfs["lidar"].header.frame_id == "base_link"
    assert np.allclose(_tf_matrix(tfs["lidar"]), scans.t_base_lidar, atol=1e-9)
    assert np.allclose(scans.t_base_lidar, transforms["extrinsic_base_to_lidar"])
    assert np.allclose(scans.t_base_lidar[:3, 3], [0, 0, 0.15]) and np.allclose(scans.t_base_lidar[:3, :3], np.eye(3))
    # the bag's time range covers every sweep's points: the node can interpolate odometry at each point's time
    odom_ns = np.array([t for t, _ in msgs["/odom"]])
    assert odom_ns[0] < scans.stamps_ns[0] and scans.stamps_ns[-1] + 1e8 <= odom_ns[-1]


def test_images_in_bag_equal_pngs(scene, transforms, bag_messages):
    msgs, _ = bag_messages
    for (_, img), f in zip(msgs["/camera/image_raw"], transforms["frames"]):
        png = np.asarray(Image.open(scene / f["file_path"]))
        assert np.array_equal(np.asarray(img.data).reshape(png.shape), png)


def _odom_arrays(msgs, topic):
    stamps = np.array([s for s, _ in msgs[topic]], np.int64)
    poses = np.stack([
        make_pose(matrix_from_quat_xyzw([o.pose.pose.orientation.x, o.pose.pose.orientation.y,
                                         o.pose.pose.orientation.z, o.pose.pose.orientation.w]),
                  [o.pose.pose.position.x, o.pose.pose.position.y, o.pose.pose.position.z])
        for _, o in msgs[topic]
    ])
    return stamps, poses


def test_timestamps_line_up(transforms, bag_messages):
    msgs, _ = bag_messages
    img_ns = np.array([s for s, _ in msgs["/camera/image_raw"]], np.int64)
    odom_ns, _ = _odom_arrays(msgs, "/odom")
    gt_ns, gt = _odom_arrays(msgs, "/ground_truth/odometry")
    assert np.array_equal(odom_ns, gt_ns)
    period = 1e9 / SMALL.odom_rate_hz
    assert np.allclose(np.diff(odom_ns), period, atol=1)
    assert np.allclose(np.diff(img_ns), 1e9 / SMALL.image_rate_hz, atol=1)
    assert not np.isin(img_ns, odom_ns).any()  # separate clock grids: consumers must interpolate
    for s in img_ns:
        before, after = odom_ns[odom_ns <= s], odom_ns[odom_ns >= s]
        assert len(before) and len(after)
        assert s - before[-1] <= period and after[0] - s <= period
    # ground truth in the bag agrees with transforms.json through the extrinsic (linear interpolation of position)
    ext = np.asarray(transforms["extrinsic_base_to_camera_optical"])
    for s, f in zip(img_ns, transforms["frames"]):
        base_from_json = np.asarray(f["transform_matrix"]) @ GL_TO_CV @ inv_pose(ext)
        interp = np.array([np.interp(s, gt_ns, gt[:, i, 3]) for i in range(3)])
        assert np.linalg.norm(interp - base_from_json[:3, 3]) < 0.02


def test_bag_odometry_noise_statistics(bag_messages):
    """White jitter std estimated from the bag: consecutive relative motions cancel the slow bias."""
    msgs, _ = bag_messages
    _, noisy = _odom_arrays(msgs, "/odom")
    _, gt = _odom_arrays(msgs, "/ground_truth/odometry")
    rel_gt = inv_pose(gt[:-1]) @ gt[1:]
    rel_noisy = inv_pose(noisy[:-1]) @ noisy[1:]
    res = inv_pose(rel_gt) @ rel_noisy  # ~ J_k^-1 (small bias step) J_k+1: variance 2 sigma^2 per axis
    # remove the (known, small) contribution of one random-walk step: translation steps plus the yaw step acting on
    # the lever arm of the position, summed over the 3 axes; what is left is 3 axes x 2 jitters
    dt = 1.0 / SMALL.odom_rate_hz
    lever2 = np.mean(gt[:-1, 0, 3] ** 2 + gt[:-1, 1, 3] ** 2)
    rw_var = (2 * SMALL.odom_trans_rw_sigma**2 + SMALL.odom_z_rw_sigma**2 + SMALL.odom_yaw_rw_sigma**2 * lever2) * dt
    trans_var = (res[:, :3, 3] ** 2).mean(0).sum()
    trans_std = np.sqrt(max(trans_var - rw_var, 0.0) / 6)
    rot_var = (so3_log(res[:, :3, :3]) ** 2).mean(0).sum() - SMALL.odom_yaw_rw_sigma**2 * dt
    rot_std = np.sqrt(max(rot_var, 0.0) / 6)
    assert trans_std == pytest.approx(SMALL.odom_jitter_trans, rel=0.3)
    assert rot_std == pytest.approx(SMALL.odom_jitter_rot, rel=0.3)
    # odometry starts at the ground truth (bias B_0 = identity) up to jitter
    assert np.linalg.norm(noisy[0, :3, 3] - gt[0, :3, 3]) < 6 * SMALL.odom_jitter_trans


# ------------------------------------------------------------------------------------------------- range sensors
def test_depth_noise_model_statistics():
    """Flat views at several ranges: the residual std follows sigma(z) = 0.0012 + 0.0019 (z - 0.4)^2, zero mean;
    dropouts at their rate; outside [min_range, max_range] nothing is measured."""
    cfg = DepthCameraConfig()
    assert depth_sigma(0.4, cfg) == pytest.approx(0.0012) and depth_sigma(3.0, cfg) == pytest.approx(0.014044)
    rng = np.random.default_rng(0)
    for z in (0.8, 2.0, 4.0, 6.5):
        meas = simulate_depth(np.full((300, 300), z, np.float32), cfg, rng)
        ok = meas > 0
        assert 1 - ok.mean() == pytest.approx(cfg.dropout, abs=0.002)
        res = meas[ok].astype(np.float64) - z
        sigma = depth_sigma(z, cfg)
        assert res.std() == pytest.approx(sigma, rel=0.03), z
        assert abs(res.mean()) < 4 * sigma / np.sqrt(ok.sum()) + 1e-6
    for z in (0.2, 9.0):
        assert not simulate_depth(np.full((20, 20), z, np.float32), cfg, rng).any()


def test_depth_holes_at_edges():
    """A step from 1 m to 3 m: both sides of the edge read 0, flat parts are measured; a miss reads 0 and so do its
    neighbours; slanted planes keep their readings."""
    cfg = DepthCameraConfig(dropout=0.0)
    z = np.full((10, 12), 1.0, np.float32)
    z[:, 6:] = 3.0
    z[0, 0] = 0.0
    meas = simulate_depth(z, cfg, np.random.default_rng(1))
    edge = depth_edges(z, cfg.edge_threshold_rel)
    assert edge[:, 5].all() and edge[:, 6].all() and edge[0, 1] and edge[1, 0] and not edge[0, 0]
    assert edge.sum() == 2 * 10 + 2
    assert not meas[edge | (z == 0)].any() and (meas[~edge & (z > 0)] > 0).all()
    # a plane seen at a grazing angle is no edge, even where neighbouring pixels differ by 10 % of the depth
    # (inverse depth is affine in the pixel coordinates on a plane)
    rows, cols = np.mgrid[0:40, 0:30].astype(np.float32)
    plane = 1.0 / (1.0 + 0.1 * rows + 0.004 * cols)
    assert np.abs(np.diff(plane, axis=0) / plane[1:]).max() > 0.09
    assert not depth_edges(plane, 0.05).any()
    # a thin pole in front of a wall: its pixels and the wall pixels next to it are holes
    scene = np.full((5, 9), 4.0, np.float32)
    scene[:, 4] = 1.0
    assert depth_edges(scene, 0.05)[:, 3:6].all() and not depth_edges(scene, 0.05)[:, [0, 1, 7, 8]].any()


def test_sensor_depth_in_scene(scene, transforms):
    """The scene's sensor depth against its ground-truth depth: noise per range bin as modelled (plus millimetre
    rounding on both), every depth-edge pixel a hole, dropouts rare elsewhere."""
    cfg = SMALL.depth_camera
    gts, meas = [], []
    for f in transforms["frames"]:
        gt = np.asarray(Image.open(scene / f["depth_file_path"])).astype(np.float64) * 0.001
        m = np.asarray(Image.open(scene / f["sensor_depth_file_path"])).astype(np.float64) * 0.001
        # edges of the millimetre-rounded truth; 5 % margin for the pixels that rounding moves across the threshold
        edge = depth_edges(gt.astype(np.float32), 1.05 * cfg.edge_threshold_rel)
        assert not m[edge].any()
        gts.append(gt[~edge])
        meas.append(m[~edge])
        assert edge.any()
    gt, m = np.concatenate(gts), np.concatenate(meas)
    ok = m > 0
    assert ok.mean() > 0.98
    checked = 0
    for lo in np.arange(1.0, 5.0, 0.5):
        sel = ok & (gt >= lo) & (gt < lo + 0.5)
        if sel.sum() < 2000:
            continue
        res = m[sel] - gt[sel]
        expected = np.sqrt(np.mean(depth_sigma(gt[sel], cfg) ** 2) + 2 * 1e-6 / 12)
        assert res.std() == pytest.approx(expected, rel=0.1), lo
        checked += 1
    assert checked >= 3


def _lidar_world_points(scene: Path, scans: LidarScans, deskew: bool = True) -> np.ndarray:
    """World positions of every LiDAR point from the ground-truth odometry (odometry.npz), each at its capture time
    (``deskew``) or, wrongly, all at its sweep's stamp."""
    with np.load(scene / "odometry.npz") as d:
        odom_ns, odom_gt = d["odom_stamps_ns"], d["odom_gt"]
    out = []
    for s in range(len(scans)):
        xyz, t = scans.scan(s)
        t_ns = scans.stamps_ns[s] + np.round(t.astype(np.float64) * 1e9).astype(np.int64) * deskew
        uniq, inv = np.unique(t_ns, return_inverse=True)
        world_lidar = interpolate_poses(odom_ns, odom_gt, uniq) @ scans.t_base_lidar
        pose = world_lidar[inv]
        out.append(np.einsum("nij,nj->ni", pose[:, :3, :3], xyz) + pose[:, :3, 3])
    return np.concatenate(out)


def test_lidar_points_lie_on_the_mesh(scene, gt_mesh):
    """Each point, placed with the ground-truth pose at its own time, is on the mesh within the range noise; placing
    a whole sweep at its stamp (no deskewing) is clearly worse: the rig moves during a sweep."""
    import open3d as o3d

    _, rs = gt_mesh
    scans = LidarScans.load(scene / "lidar.npz")
    sigma = SMALL.lidar.range_noise
    dist = rs.compute_distance(o3d.core.Tensor(_lidar_world_points(scene, scans).astype(np.float32))).numpy()
    assert np.median(dist) < 0.75 * sigma and np.quantile(dist, 0.95) < 2.2 * sigma and dist.max() < 6 * sigma
    skewed = rs.compute_distance(
        o3d.core.Tensor(_lidar_world_points(scene, scans, deskew=False).astype(np.float32))).numpy()
    assert np.quantile(skewed, 0.9) > 1.5 * np.quantile(dist, 0.9)
    assert np.linalg.norm(scans.points, axis=1).min() >= SMALL.lidar.min_range


def test_lidar_beams_sweeps_and_rate(scene, transforms):
    """16 rings at -15..15 degrees, 10 Hz sweeps with 0 <= time < 0.1 s in firing order, about 14k points each."""
    cfg = SMALL.lidar
    scans = LidarScans.load(scene / "lidar.npz")
    xyz, rings = scans.points.astype(np.float64), scans.rings
    elev = np.rad2deg(np.arctan2(xyz[:, 2], np.hypot(xyz[:, 0], xyz[:, 1])))
    assert set(np.unique(rings).tolist()) == set(range(16))
    assert np.allclose(elev, np.linspace(-15, 15, 16)[rings], atol=1e-3)  # range noise is along the beam
    assert elev.min() == pytest.approx(-15, abs=1e-3) and elev.max() == pytest.approx(15, abs=1e-3)
    assert np.allclose(np.diff(scans.stamps_ns), 1e8, atol=1)
    assert scans.stamps_ns[0] == transforms["frames"][0]["timestamp_ns"] + int(cfg.time_offset_s * 1e9)
    assert scans.stamps_ns[-1] + 1e8 <= transforms["frames"][-1]["timestamp_ns"]
    counts = np.diff(scans.offsets)
    assert np.all((counts > 10_000) & (counts < 20_000))
    full = cfg.columns * cfg.beams
    assert 1 - counts.mean() / full == pytest.approx(cfg.dropout, abs=0.01)  # closed room: every beam hits
    for s in range(len(scans)):
        _, ts = scans.scan(s)
        assert ts.min() == 0 and ts.max() < 0.1 and np.all(np.diff(ts) >= 0)
        assert ts.max() == pytest.approx((cfg.columns - 1) / cfg.columns / cfg.rate_hz, rel=1e-5)
    # the head turns clockwise: azimuth decreases with time (after the first column's +180 degrees)
    xs, ts = scans.scan(0)
    az = np.unwrap(np.arctan2(xs[:, 1], xs[:, 0]).astype(np.float64))
    assert np.all(np.diff(az[ts > 0]) <= 1e-6)
    meta = json.loads((scene / "metadata.json").read_text())
    assert meta["sensors"]["lidar"]["sweeps"] == len(scans) and meta["frames"]["lidar"] == "lidar"


def test_noise_model_long_run():
    """Pure noise generator over a long synthetic run (no rendering): random-walk and jitter statistics."""
    rate, seconds = 50.0, 4000.0
    stamps = np.arange(int(rate * seconds)) / rate
    # a moving ground truth (circle with yaw following the path) so the composition is exercised
    ang = 2 * np.pi * stamps / 20.0
    gt = make_pose(so3_exp(np.stack([0 * ang, 0 * ang, ang], 1)), np.stack([np.cos(ang), np.sin(ang), 0 * ang], 1))
    p = OdometryNoiseParams(trans_rw_sigma=0.02, z_rw_sigma=0.004, yaw_rw_sigma=0.005, jitter_trans=0.003,
                            jitter_rot=0.002)
    out = simulate_odometry_noise(gt, stamps, p, np.random.default_rng(1))
    dt = 1.0 / rate
    assert np.allclose(out.bias[0], np.eye(4))
    inc = np.diff(out.bias_xyz, axis=0) / np.sqrt(dt)
    assert inc[:, 0].std() == pytest.approx(p.trans_rw_sigma, rel=0.05)
    assert inc[:, 1].std() == pytest.approx(p.trans_rw_sigma, rel=0.05)
    assert inc[:, 2].std() == pytest.approx(p.z_rw_sigma, rel=0.05)
    assert (np.diff(out.bias_yaw) / np.sqrt(dt)).std() == pytest.approx(p.yaw_rw_sigma, rel=0.05)
    # documented composition: noisy = B @ gt @ J
    assert np.allclose(out.noisy, out.bias @ gt @ out.jitter, atol=1e-12)
    j = inv_pose(out.bias @ gt) @ out.noisy
    assert j[:, :3, 3].std() == pytest.approx(p.jitter_trans, rel=0.05)
    assert so3_log(j[:, :3, :3]).std() == pytest.approx(p.jitter_rot, rel=0.05)
    # the random-walk statistics also follow from the observable (noisy, gt) pairs: B = noisy J^-1 gt^-1
    # and over a long horizon the bias spreads like sigma * sqrt(t) (checked on the drift of the odom frame origin)
    lag = int(100 * rate)
    drift = out.bias_xyz[lag::lag, :2] - out.bias_xyz[:-lag:lag, :2]
    assert drift.std() == pytest.approx(p.trans_rw_sigma * np.sqrt(100.0), rel=0.15)


def test_deterministic_and_seeded(tmp_path):
    cfg = SceneConfig(seed=5, frames=3, width=32, height=24, write_bag=False)
    a = generate_scene(cfg, tmp_path / "a", progress=False)
    b = generate_scene(cfg, tmp_path / "b", progress=False)
    c = generate_scene(SceneConfig(seed=6, frames=3, width=32, height=24, write_bag=False), tmp_path / "c",
                       progress=False)
    for sub in ("images", "depth", "labels", "sensor_depth"):
        for name in sorted(os.listdir(a.root / sub)):
            img_a, img_b = Image.open(a.root / sub / name), Image.open(b.root / sub / name)
            assert np.array_equal(np.asarray(img_a), np.asarray(img_b))
    assert (a.root / "transforms.json").read_text() == (b.root / "transforms.json").read_text()
    la, lb = LidarScans.load(a.lidar), LidarScans.load(b.lidar)
    assert np.array_equal(la.points, lb.points) and np.array_equal(la.times, lb.times)
    assert not np.array_equal(np.asarray(Image.open(a.root / "images/frame_00000.png")),
                              np.asarray(Image.open(c.root / "images/frame_00000.png")))
    assert a.bag is None and json.loads((a.root / "transforms.json").read_text())["bag"] is None


def test_refuses_foreign_nonempty_dir(tmp_path):
    cfg = SceneConfig(frames=2, width=16, height=12, write_bag=False)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        generate_scene(cfg, out, progress=False)
    generate_scene(cfg, out, progress=False, force=True)
    assert (out / "notes.txt").read_text() == "keep me" and is_complete_scene(out)
    generate_scene(cfg, out, progress=False)  # a previous scene may be overwritten without --force


def test_ensure_default_scene_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NERF_MAPPING_CACHE", str(tmp_path / "cache"))
    assert default_scene_dir() == tmp_path / "cache" / "demo_scene_v3"
    cfg = SceneConfig(frames=2, width=16, height=12, write_bag=False)
    path = ensure_default_scene(progress=False, config=cfg)
    assert path == default_scene_dir() and is_complete_scene(path, cfg)
    marker = path / ".nerf_mapping_scene.json"
    mtime = marker.stat().st_mtime_ns
    assert ensure_default_scene(progress=False, config=cfg) == path and marker.stat().st_mtime_ns == mtime  # reused
    # a half-written scene (marker says incomplete) is regenerated
    data = json.loads(marker.read_text())
    data["complete"] = False
    marker.write_text(json.dumps(data))
    (path / "transforms.json").unlink()
    ensure_default_scene(progress=False, config=cfg)
    assert is_complete_scene(path, cfg) and (path / "transforms.json").exists()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp folders left behind


def test_cli_sqlite3(tmp_path):
    import argparse

    from nerf_mapping.scene.__main__ import main
    from rosbags.rosbag2 import Reader

    out = tmp_path / "cli"
    rc = main(["generate", "--output", str(out), "--frames", "3", "--resolution", "24x16", "--seed", "2",
               "--bag-storage", "sqlite3", "--odom-rate", "30", "--no-lidar", "--no-depth-camera", "--quiet"])
    assert rc == 0 and is_complete_scene(out)
    assert list((out / "bag").glob("*.db3"))
    with Reader(out / "bag") as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
    assert counts["/camera/image_raw"] == 3 and counts["/odom"] >= 3 * 3
    # the range sensors are off: no topics, files or per-frame keys
    assert "/lidar/points" not in counts and "/camera/depth/image_raw" not in counts
    assert not (out / "lidar.npz").exists() and not (out / "sensor_depth").exists()
    t = json.loads((out / "transforms.json").read_text())
    assert "sensor_depth_file_path" not in t["frames"][0] and "lidar" not in t
    # refuses a foreign non-empty folder without --force
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("x")
    assert main(["generate", "--output", str(tmp_path / "other"), "--frames", "2", "--quiet"]) == 2
    # add_cli plugs into a parent "scene" command the way nerf_mapping.cli wires it
    parser = argparse.ArgumentParser()
    scene_sub = parser.add_subparsers(dest="cmd").add_parser("scene").add_subparsers(dest="scene_cmd")
    add_cli(scene_sub)
    args = parser.parse_args(["scene", "generate", "-o", "x", "--resolution", "64x48"])
    assert args.resolution == (64, 48) and callable(args.func)


def test_corridor_layout_spans_thirty_metres_and_every_pixel_hits(tmp_path):
    """The large layout: a corridor walked end to end, through the CLI; closed (every pixel has depth), the camera
    path clear of the geometry, its side rooms seen through the doorways (their floor is in the pictures)."""
    from nerf_mapping.scene.__main__ import main
    from nerf_mapping.scene.layout import CORRIDOR_BOX, SIDE_ROOM_Y

    out = tmp_path / "corridor"
    assert main(["generate", "--layout", "corridor", "--output", str(out), "--frames", "40", "--resolution", "48x36",
                 "--no-bag", "--quiet"]) == 0
    t = json.loads((out / "transforms.json").read_text())
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["config"]["layout"] == "corridor" and np.allclose(t["scene_box"], CORRIDOR_BOX)
    eyes = np.stack([np.asarray(f["transform_matrix"])[:3, 3] for f in t["frames"]])
    assert eyes[:, 0].max() - eyes[:, 0].min() > 25.0  # walked the length of the corridor
    assert np.all(np.abs(eyes[:, 1]) < 0.5) and meta["camera_path_clearance_m"] > 0.5
    depth = np.stack([np.asarray(Image.open(out / f["depth_file_path"])) for f in t["frames"]]) * 0.001
    assert depth.min() > 0 and depth.max() > 8.0  # closed; looking down the corridor sees far
    # the same sensors as the room: the depth camera stops at 8 m, the LiDAR sees down the corridor
    sensor = np.stack([np.asarray(Image.open(out / f["sensor_depth_file_path"])) for f in t["frames"]]) * 0.001
    assert sensor.max() <= 8.0 and not sensor[depth > 8.5].any() and (sensor[depth < 4] > 0).mean() > 0.9
    scans = LidarScans.load(out / "lidar.npz")
    assert len(scans) == 38 and np.linalg.norm(scans.points, axis=1).max() > 12.0
    # pixels whose surface lies behind the corridor wall (y > the wall): the side rooms, through their doorways
    seen_rooms = 0
    for f, d in zip(t["frames"], depth):
        c2w = np.asarray(f["transform_matrix"]) @ GL_TO_CV
        h, w = d.shape
        v, u = np.mgrid[0:h, 0:w] + 0.5
        ray = np.stack([(u - t["cx"]) / t["fl_x"], (v - t["cy"]) / t["fl_y"], np.ones_like(u)], -1) * d[..., None]
        y = (ray.reshape(-1, 3) @ c2w[:3, :3].T + c2w[:3, 3])[:, 1]
        seen_rooms += int((y > SIDE_ROOM_Y[0] + 0.05).sum())
    assert seen_rooms > 100
    with pytest.raises(ValueError, match="layout"):
        SceneConfig(layout="maze").validate()
