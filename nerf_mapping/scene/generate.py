"""Demo scene generation: render the labeled room along a handheld trajectory, simulate the rig's range sensors and
write every output.

Output layout of ``generate_scene(cfg, DIR)``::

    DIR/
      transforms.json        nerfstudio (PINHOLE) poses = ground truth camera-to-world, OpenGL camera axes, world frame
      images/frame_00000.png RGB uint8
      depth/frame_00000.png  uint16 ground-truth z-depth along the optical axis in millimetres (0 = no hit): what the
                             evaluation reads
      sensor_depth/frame_00000.png  uint16 millimetres, the simulated depth camera's reading of the same view (noise,
                             holes at depth edges, dropouts, range gate; 0 = no reading); per frame
                             ``sensor_depth_file_path`` in transforms.json (absent with ``depth_camera.enabled=False``)
      labels/frame_00000.png uint8 class ids (see labels.json)
      labels.json            {"0": "unknown", "1": "floor", ...}
      mesh.ply               ground-truth mesh, per-vertex and per-face class_id (see mesh_io)
      metadata.json          config, intrinsics, frames/extrinsics, noise models, sensors, classes, room box, timings
      odometry.npz           odometry-rate stamps + ground-truth / noisy / bias poses, camera poses at image stamps
      lidar.npz              the simulated LiDAR's sweeps (absent with ``lidar.enabled=False``), see below
      bag/                   rosbag2 (mcap or sqlite3), see bag.py for topics
      .nerf_mapping_scene.json  marker: written first as incomplete, rewritten (atomically) as complete last

World frame = map = ground-truth odom frame: z up, metres, the room spans ``layout.ROOM_BOX`` (the corridor layout
``layout.CORRIDOR_BOX``).

Sensor models (:mod:`nerf_mapping.scene.sensors`): the depth camera shares the colour camera's intrinsics, pose and
stamps (Kinect-like axial noise ``0.0012 + 0.0019 (z - 0.4)^2`` m); the LiDAR is a 16-beam, +-15 degree, 10 Hz
spinning head 15 cm above base_link (level, x forward), whose points are each expressed in the lidar frame at their
own capture time. ``lidar.npz`` (plain ``np.load``)::

    stamps_ns     [S]     int64    sweep start = the PointCloud2 header stamp
    offsets       [S+1]   int64    the points of sweep s are rows offsets[s]:offsets[s+1]
    points        [N,3]   float32  x, y, z (m) in the lidar frame at the point's capture time
    times         [N]     float32  capture time, seconds after its sweep's stamp (0 <= time < 1 / rate)
    rings         [N]     uint8    beam index, 0 = lowest elevation
    t_base_lidar  [4,4]   float64  static pose of the lidar frame in base_link

A point's world position is ``T_world_base(stamp + time) @ t_base_lidar @ [x, y, z, 1]`` with the ground-truth base
pose (odometry.npz ``odom_gt`` at ``odom_stamps_ns``, 50 Hz, SE(3)-interpolated: under a millimetre from the exact
path).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .sensors import DepthCameraConfig, LidarConfig

MARKER = ".nerf_mapping_scene.json"
FORMAT_VERSION = 2  # 2: nested sensor configs, sensor_depth/, lidar.npz
DEFAULT_SCENE_NAME = "demo_scene_v3"  # v2: the bag carries /camera/labels; v3: depth camera and LiDAR
LAYOUTS = ("room", "corridor")
# names generate_scene owns inside an output dir (only these are removed when overwriting)
_OUTPUT_NAMES = ("transforms.json", "metadata.json", "labels.json", "mesh.ply", "odometry.npz", "lidar.npz", "images",
                 "depth", "sensor_depth", "labels", "bag", MARKER)


@dataclass
class SceneConfig:
    """Everything that defines a generated scene (same config -> byte-identical images)."""

    seed: int = 0
    frames: int = 150
    width: int = 320
    height: int = 240
    hfov_deg: float = 70.0
    image_rate_hz: float = 10.0
    odom_rate_hz: float = 50.0
    # odometry noise (see odometry.simulate_odometry_noise for the exact model)
    odom_trans_rw_sigma: float = 0.02  # m/sqrt(s), x/y bias random walk
    odom_z_rw_sigma: float = 0.002  # m/sqrt(s), z bias random walk
    odom_yaw_rw_sigma: float = 0.005  # rad/sqrt(s), yaw bias random walk
    odom_jitter_trans: float = 0.003  # m, white per-message std per axis
    odom_jitter_rot: float = 0.002  # rad, white per-message std per axis
    bag_storage: str = "mcap"  # "mcap" | "sqlite3"
    write_bag: bool = True
    supersample: int = 1  # s x s sub-pixel colour samples (anti-aliasing; cost ~ s^2)
    shadows: bool = True
    start_time_s: float = 1_700_000_000.0  # ROS time of the first image (bag stamps and transforms.json timestamps)
    layout: str = "room"  # "room": the 5 m x 4 m demo room | "corridor": a 30 m corridor with three side rooms
    depth_camera: DepthCameraConfig = field(default_factory=DepthCameraConfig)  # aligned with the colour camera
    lidar: LidarConfig = field(default_factory=LidarConfig)  # spinning LiDAR on the rig

    def validate(self) -> None:
        if self.frames < 1:
            raise ValueError("frames must be >= 1")
        if self.width < 8 or self.height < 8:
            raise ValueError("resolution must be at least 8x8")
        if not 10.0 <= self.hfov_deg <= 150.0:
            raise ValueError("hfov_deg must be in [10, 150]")
        if self.image_rate_hz <= 0 or self.odom_rate_hz <= 0:
            raise ValueError("rates must be positive")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.bag_storage not in ("mcap", "sqlite3"):
            raise ValueError(f"bag_storage must be 'mcap' or 'sqlite3', got {self.bag_storage!r}")
        noise = (self.odom_trans_rw_sigma, self.odom_z_rw_sigma, self.odom_yaw_rw_sigma, self.odom_jitter_trans,
                 self.odom_jitter_rot)
        if min(noise) < 0:
            raise ValueError("odometry noise parameters must be >= 0")
        self.depth_camera.validate()
        self.lidar.validate()


@dataclass
class SceneInfo:
    root: Path
    transforms: Path
    metadata: Path
    labels: Path
    mesh: Path
    odometry: Path
    images_dir: Path
    depth_dir: Path
    labels_dir: Path
    sensor_depth_dir: Path | None  # None: the depth camera was off
    lidar: Path | None  # lidar.npz (sensors.LidarScans.load); None: the LiDAR was off
    bag: Path | None
    num_frames: int
    seconds: float  # wall-clock generation time (0 when reused from cache)

    @staticmethod
    def from_dir(root: Path, seconds: float = 0.0) -> "SceneInfo":
        root = Path(root)
        marker = json.loads((root / MARKER).read_text())
        return SceneInfo(root=root, transforms=root / "transforms.json", metadata=root / "metadata.json",
                         labels=root / "labels.json", mesh=root / "mesh.ply", odometry=root / "odometry.npz",
                         images_dir=root / "images", depth_dir=root / "depth", labels_dir=root / "labels",
                         sensor_depth_dir=_existing(root / "sensor_depth"), lidar=_existing(root / "lidar.npz"),
                         bag=_existing(root / "bag"), num_frames=int(marker["config"]["frames"]),
                         seconds=seconds)


def _existing(path: Path) -> Path | None:
    return path if path.exists() else None


def ground_truth_frames(root: Path) -> tuple[list[int], list[Path], list[np.ndarray]]:
    """The ground truth of a generated scene's images, read from its transforms.json, one entry per frame in file
    order: image stamps (ns), image paths, camera-to-world poses (4x4 float64, OpenGL camera axes, world frame)."""
    root = Path(root)
    d = json.loads((root / "transforms.json").read_text())
    stamps = [int(f["timestamp_ns"]) for f in d["frames"]]
    paths = [root / f["file_path"] for f in d["frames"]]
    c2w = [np.asarray(f["transform_matrix"], dtype=np.float64) for f in d["frames"]]
    return stamps, paths, c2w


# ----------------------------------------------------------------------------------------------------------------------
# cache / marker handling


def default_scene_dir() -> Path:
    """Cache folder of the built-in demo scene: $NERF_MAPPING_CACHE (or ~/.cache/nerf_mapping)/DEFAULT_SCENE_NAME."""
    base = os.environ.get("NERF_MAPPING_CACHE") or os.path.join("~", ".cache", "nerf_mapping")
    return Path(base).expanduser() / DEFAULT_SCENE_NAME


def read_marker(root: Path) -> dict | None:
    try:
        return json.loads((Path(root) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def is_complete_scene(root: Path, cfg: SceneConfig | None = None) -> bool:
    """True if ``root`` holds a fully written scene (and, when ``cfg`` is given, one generated from that config)."""
    marker = read_marker(root)
    if not marker or not marker.get("complete") or marker.get("format_version") != FORMAT_VERSION:
        return False
    return cfg is None or marker.get("config") == json.loads(json.dumps(asdict(cfg)))


def _write_marker(root: Path, cfg: SceneConfig, complete: bool) -> None:
    payload = {"generator": "nerf_mapping.scene", "format_version": FORMAT_VERSION, "complete": complete,
               "config": asdict(cfg)}
    tmp = root / (MARKER + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, root / MARKER)  # atomic: a crash leaves either the old or the new marker, never half of one


def _prepare_output(output: Path, force: bool) -> None:
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"{output} exists and is not a directory")
    if output.exists() and any(output.iterdir()):
        if read_marker(output) is None and not force:
            raise FileExistsError(
                f"{output} is not empty and does not hold a generated scene; choose another --output or pass --force")
        for name in _OUTPUT_NAMES:  # never rmtree the user's folder itself: only what we would write
            p = output / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
    output.mkdir(parents=True, exist_ok=True)


def ensure_default_scene(progress: bool = True, config: SceneConfig | None = None) -> Path:
    """Path of the cached default demo scene, generating it on first use.

    A scene is reused only if its marker says complete and records the same config; anything else (missing, half
    written by an interrupted run, other version) is regenerated. Generation happens in a temporary sibling folder that
    is renamed into place, so concurrent or interrupted runs never expose a partial scene.
    """
    cfg = config or SceneConfig()
    target = default_scene_dir()
    if is_complete_scene(target, cfg):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    generate_scene(cfg, tmp, progress=progress)
    if is_complete_scene(target, cfg):  # another process finished first: keep theirs
        shutil.rmtree(tmp)
        return target
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target


# ----------------------------------------------------------------------------------------------------------------------


def _save_png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(arr).save(path, compress_level=3)  # uint16 -> 16-bit greyscale PNG; level 3: fast, still small


def timeline(cfg: SceneConfig) -> tuple[np.ndarray, np.ndarray, int]:
    """Image stamps and odometry stamps (int ns). The odometry grid is offset by a non-trivial fraction of its period
    so that no odometry stamp coincides with an image stamp, and it brackets every image with at least one sample
    before the first and after the last image."""
    t0 = int(round(cfg.start_time_s * 1e9))
    img = t0 + np.round(np.arange(cfg.frames) * 1e9 / cfg.image_rate_hz).astype(np.int64)
    return img, odometry_grid(img, cfg.odom_rate_hz), t0


def odometry_grid(image_stamps_ns: np.ndarray, odom_rate_hz: float) -> np.ndarray:
    """Odometry stamps (int ns) at ``odom_rate_hz`` bracketing the (increasing) image stamps, starting 0.37 of a
    period before the first image (see :func:`timeline`)."""
    period = 1e9 / odom_rate_hz
    first = int(image_stamps_ns[0]) - 0.37 * period
    count = int(np.ceil((int(image_stamps_ns[-1]) - first) / period)) + 2
    return np.round(first + np.arange(count) * period).astype(np.int64)


def _sensors_metadata(cfg: SceneConfig, t_base_lidar: np.ndarray, scans) -> dict:
    """metadata.json's description of the simulated range sensors (models, mount, what was written)."""
    from . import bag as bagmod

    d, li = cfg.depth_camera, cfg.lidar
    out = {"depth_camera": {
        **asdict(d), "folder": "sensor_depth" if d.enabled else None, "topic": bagmod.TOPIC_DEPTH,
        "frame_id": bagmod.FRAME_CAMERA, "encoding": "16UC1 millimetres (little-endian), 0 = no reading",
        "model": "aligned with the colour camera (same intrinsics, pose, stamps); measured z = z + N(0, sigma(z)^2), "
                 "sigma(z) = sigma_base + sigma_quad (z - sigma_offset)^2 (Nguyen et al. 2012), rounded to mm; 0 "
                 "at depth edges (both sides: the second difference of the clean inverse depth along the pixel's "
                 "row or column, zero on any plane, above edge_threshold_rel / z; and next to a miss), with "
                 "probability dropout, and outside [min_range, max_range]"}}
    out["lidar"] = {
        **asdict(li), "file": "lidar.npz" if scans is not None else None, "topic": bagmod.TOPIC_POINTS,
        "frame_id": bagmod.FRAME_LIDAR, "columns": li.columns, "t_base_lidar": t_base_lidar.tolist(),
        "elevations_deg": np.rad2deg(li.elevations()).tolist(),
        "model": "beams fire together once per column, columns * rate_hz columns per second, clockwise from the "
                 "rear; column j at time j / (columns * rate_hz) after the sweep stamp, cast from the ground-truth "
                 "pose at that time; range + N(0, range_noise^2); misses, returns beyond max_range or nearer than "
                 "min_range and dropouts omitted; each point in the lidar frame at its own capture time, PointCloud2 "
                 "fields x, y, z, time (float32, time relative to the header stamp)"}
    if scans is not None:
        counts = np.diff(scans.offsets)
        out["lidar"].update(sweeps=len(scans), points=int(scans.offsets[-1]),
                            points_per_sweep_mean=float(counts.mean()) if len(counts) else 0.0,
                            first_stamp_ns=int(scans.stamps_ns[0]) if len(scans) else None)
    return out


def _check_clearance(renderer, positions: np.ndarray, min_dist: float = 0.25) -> float:
    """Distance from the camera / rig path to the nearest surface; a seed whose path touches furniture is an error."""
    import open3d as o3d

    d = renderer.scene.compute_distance(o3d.core.Tensor(positions.astype(np.float32))).numpy()
    if d.min() < min_dist:
        raise RuntimeError(f"camera path passes {d.min():.3f} m from the geometry (< {min_dist} m); try another seed")
    return float(d.min())


def generate_scene(cfg: SceneConfig, output: Path, progress: bool = True, force: bool = False) -> SceneInfo:
    """Generate a demo scene into ``output`` (see the module docstring for the layout). Refuses a non-empty folder
    that is not a previously generated scene unless ``force``; a previous scene there is replaced."""
    from tqdm.auto import tqdm

    from . import bag as bagmod
    from .layout import CLASS_COLORS, CLASSES, CORRIDOR_BOX, ROOM_BOX, build_corridor_mesh, build_scene_mesh
    from .mesh_io import write_labeled_ply
    from .odometry import OdometryNoiseParams, body_twist, simulate_odometry_noise
    from .render import Intrinsics, LightingConfig, Renderer
    from .sensors import depth_to_millimetres, simulate_depth, simulate_lidar, sweep_stamps
    from .trajectory import (TrajectoryParams, base_to_camera_optical, camera_poses, camera_to_base_poses,
                             corridor_camera_poses, opencv_c2w_to_opengl)

    cfg.validate()
    t_begin = time.perf_counter()
    output = Path(output)
    _prepare_output(output, force)
    _write_marker(output, cfg, complete=False)
    dcam, lidar_cfg = cfg.depth_camera, cfg.lidar
    for sub in ("images", "depth", "labels") + (("sensor_depth",) if dcam.enabled else ()):
        (output / sub).mkdir()

    corridor = cfg.layout == "corridor"
    mesh = build_corridor_mesh(cfg.seed) if corridor else build_scene_mesh(cfg.seed)
    scene_box = CORRIDOR_BOX if corridor else ROOM_BOX
    poses = corridor_camera_poses if corridor else camera_poses
    renderer = Renderer(mesh, LightingConfig(shadows=cfg.shadows))
    intr = Intrinsics.from_fov(cfg.width, cfg.height, cfg.hfov_deg)
    img_ns, odom_ns, t0 = timeline(cfg)
    duration = max(cfg.frames / cfg.image_rate_hz, 1.0)
    traj = TrajectoryParams.from_seed(cfg.seed, duration)
    rel = lambda ns: (ns - t0).astype(np.float64) * 1e-9  # noqa: E731  trajectory time (s) of stamps
    cams = poses(traj, rel(img_ns))  # T_world_cam, OpenCV optical axes
    t_base_cam = base_to_camera_optical()
    gt_base = camera_to_base_poses(poses(traj, rel(odom_ns)))  # T_odom_base (odom == world for ground truth)
    t_base_lidar = lidar_cfg.t_base_lidar()
    lidar_ns = sweep_stamps(img_ns[0], img_ns[-1], lidar_cfg) if lidar_cfg.enabled else np.zeros(0, np.int64)
    rig = [cams[:, :3, 3], gt_base[:, :3, 3]] + ([(gt_base @ t_base_lidar)[:, :3, 3]] if lidar_cfg.enabled else [])
    clearance = _check_clearance(renderer, np.concatenate(rig))
    timings = {}

    # --- render
    t_phase = time.perf_counter()
    frames = []
    c2w_gl = opencv_c2w_to_opengl(cams)
    depth_rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0xDE9]))
    for i in tqdm(range(cfg.frames), desc=f"rendering the {cfg.layout} scene", unit="frame", disable=not progress):
        rgb, depth, labels = renderer.render(cams[i], intr, cfg.supersample)
        name = f"frame_{i:05d}.png"
        _save_png(output / "images" / name, rgb)
        _save_png(output / "depth" / name, depth_to_millimetres(depth))
        _save_png(output / "labels" / name, labels)
        frame = {
            "file_path": f"images/{name}",
            "transform_matrix": c2w_gl[i].tolist(),
            "depth_file_path": f"depth/{name}",
            "semantic_file_path": f"labels/{name}",
            "timestamp": int(img_ns[i]) * 1e-9,
            "timestamp_ns": int(img_ns[i]),
        }
        if dcam.enabled:
            _save_png(output / "sensor_depth" / name, depth_to_millimetres(simulate_depth(depth, dcam, depth_rng)))
            frame["sensor_depth_file_path"] = f"sensor_depth/{name}"
        frames.append(frame)
    timings["render_s"] = time.perf_counter() - t_phase

    # --- LiDAR: each column cast from the exact (closed-form) pose at its firing time
    t_phase = time.perf_counter()
    scans = None
    if lidar_cfg.enabled:
        lidar_rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0x11DA2]))
        sweep_s = rel(lidar_ns)

        def world_lidar_at(s: int, dt: np.ndarray) -> np.ndarray:
            return camera_to_base_poses(poses(traj, sweep_s[s] + dt)) @ t_base_lidar

        scans = simulate_lidar(lambda rays: renderer.cast(rays)["t_hit"], world_lidar_at, lidar_ns, lidar_cfg,
                               lidar_rng)
        scans.save(output / "lidar.npz")
    timings["lidar_s"] = time.perf_counter() - t_phase

    # --- odometry
    noise = OdometryNoiseParams(cfg.odom_trans_rw_sigma, cfg.odom_z_rw_sigma, cfg.odom_yaw_rw_sigma,
                                cfg.odom_jitter_trans, cfg.odom_jitter_rot)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0x0D0]))
    odom_s = rel(odom_ns)
    sim = simulate_odometry_noise(gt_base, odom_s, noise, rng)
    lin, ang = body_twist(gt_base, odom_s)
    np.savez_compressed(output / "odometry.npz", odom_stamps_ns=odom_ns, odom_gt=gt_base, odom_noisy=sim.noisy,
                        odom_bias=sim.bias, image_stamps_ns=img_ns, camera_gt_opencv=cams,
                        extrinsic_base_to_camera_optical=t_base_cam)

    # --- static outputs
    labels_map = {str(k): v for k, v in CLASSES.items()}
    (output / "labels.json").write_text(json.dumps(labels_map, indent=2))
    write_labeled_ply(output / "mesh.ply", mesh.vertices, mesh.triangles, mesh.vertex_class, mesh.face_class,
                      mesh.vertex_colors)
    transforms = {
        "camera_model": "PINHOLE",
        "fl_x": intr.fx, "fl_y": intr.fy, "cx": intr.cx, "cy": intr.cy, "w": intr.width, "h": intr.height,
        "frames": frames,
        # extras (ignored by nerfstudio, read by nerf_mapping)
        "scene_box": scene_box.tolist(),
        "labels": "labels.json",
        "mesh": "mesh.ply",
        "extrinsic_base_to_camera_optical": t_base_cam.tolist(),
        "bag": "bag" if cfg.write_bag else None,
        "depth_unit_scale_factor": 0.001,
    }
    if scans is not None:
        transforms.update(lidar="lidar.npz", extrinsic_base_to_lidar=t_base_lidar.tolist())
    (output / "transforms.json").write_text(json.dumps(transforms, indent=1))

    # --- bag
    t_phase = time.perf_counter()
    bag_counts = None
    if cfg.write_bag:
        from PIL import Image

        jt2, jr2 = cfg.odom_jitter_trans**2, cfg.odom_jitter_rot**2
        gt_stream = bagmod.OdometryStream(odom_ns, gt_base, lin, ang, (1e-9,) * 6, (1e-9,) * 6)
        # the noisy stream reports the true body twist (drift-free velocity) and the jitter variance as its covariance
        noisy_stream = bagmod.OdometryStream(odom_ns, sim.noisy, lin, ang, (jt2,) * 3 + (jr2,) * 3, (1e-4,) * 6)
        bag_counts = bagmod.write_scene_bag(
            output / "bag", cfg.bag_storage, intr, img_ns,
            lambda i: np.asarray(Image.open(output / frames[i]["file_path"]).convert("RGB")),
            noisy_stream, gt_stream, t_base_cam,
            bagmod.extrinsic_custom_data(t_base_cam, t_base_lidar if scans is not None else None),
            load_labels=lambda i: np.asarray(Image.open(output / frames[i]["semantic_file_path"])),
            load_depth=(lambda i: np.asarray(Image.open(output / frames[i]["sensor_depth_file_path"])))
            if dcam.enabled else None,
            lidar=bagmod.LidarStream(scans.stamps_ns, t_base_lidar, scans.scan) if scans is not None else None)
    timings["bag_s"] = time.perf_counter() - t_phase

    seconds = time.perf_counter() - t_begin
    metadata = {
        "generator": "nerf_mapping.scene",
        "format_version": FORMAT_VERSION,
        "config": asdict(cfg),
        "conventions": {
            "world_frame": "world = map = ground-truth odom frame; REP 103: x/y horizontal, z up, metres",
            "transforms_json": "transform_matrix = camera-to-world, OpenGL camera axes (x right, y up, z back), "
                               "ground truth, expressed in the world frame",
            "camera_optical": "z forward, x right, y down (REP 103 optical frame)",
            "pixel_centers": "pixel (col i, row j) has its centre at (i + 0.5, j + 0.5)",
            "depth": "depth/*.png: uint16 ground-truth z-depth along the optical axis in millimetres (multiply by "
                     "depth_unit_scale_factor=0.001 for metres), 0 = no hit",
            "sensor_depth": "sensor_depth/*.png: the simulated depth camera (sensors.depth_camera), same encoding as "
                            "depth/, 0 = no reading",
            "lidar": "lidar.npz: stamps_ns [S] sweep starts (= PointCloud2 header stamps), offsets [S+1] (sweep s = "
                     "rows offsets[s]:offsets[s+1]), points [N,3] float32 in the lidar frame at each point's own "
                     "capture time, times [N] float32 seconds after the sweep stamp, rings [N] uint8 (0 = lowest "
                     "beam), t_base_lidar [4,4]; world point = T_world_base(stamp + time) @ t_base_lidar @ p",
            "lidar_frame": "lidar: x forward, y left, z up (REP 103); the head turns clockwise seen from above, each "
                           "sweep starting at the rear (azimuth +180 deg)",
            "labels": "labels/*.png: uint8 class id per pixel (labels.json maps id -> name), 0 = unknown/no hit",
            "mesh": "mesh.ply: binary PLY, vertex/face property class_id; vertex colour = material base colour",
            "room": "closed rooms (floor, walls, ceiling): every ray from inside hits a surface",
            "layout": "room: the 5 m x 4 m demo room; corridor: a 30 m x 2.4 m corridor along x with three 5 m x 4 m "
                      "rooms behind doorways on its +y side, walked down its middle",
        },
        "intrinsics": {"model": "PINHOLE", "fx": intr.fx, "fy": intr.fy, "cx": intr.cx, "cy": intr.cy,
                       "width": intr.width, "height": intr.height, "distortion": [0.0] * 5},
        "frames": {"odom": bagmod.FRAME_ODOM, "base": bagmod.FRAME_BASE, "camera": bagmod.FRAME_CAMERA,
                   "lidar": bagmod.FRAME_LIDAR},
        "extrinsic_base_to_camera_optical": t_base_cam.tolist(),
        "sensors": _sensors_metadata(cfg, t_base_lidar, scans),
        "scene_box": scene_box.tolist(),
        "classes": labels_map,
        "class_colors": {str(k): list(v) for k, v in CLASS_COLORS.items()},
        "lighting": asdict(LightingConfig(shadows=cfg.shadows)),
        "timeline": {"start_time_ns": t0, "image_rate_hz": cfg.image_rate_hz, "odom_rate_hz": cfg.odom_rate_hz,
                     "num_images": int(len(img_ns)), "num_odom": int(len(odom_ns)),
                     "first_odom_ns": int(odom_ns[0]), "last_odom_ns": int(odom_ns[-1])},
        "odometry_noise": {
            **asdict(noise),
            "model": "noisy_k = B_k @ gt_k @ J_k; B_k = [Rz(yaw_k) | (bx,by,bz)_k] random walk (sigma*sqrt(dt) "
                     "increments, B_0 = I), left-multiplied on the odom frame; J_k = [exp(w_k) | v_k] white "
                     "jitter in base_link, w ~ N(0, jitter_rot^2), v ~ N(0, jitter_trans^2)",
            "final_bias_xyz": sim.bias_xyz[-1].tolist(), "final_bias_yaw": float(sim.bias_yaw[-1]),
        },
        "bag": None if bag_counts is None else {"path": "bag", "storage": cfg.bag_storage, "counts": bag_counts,
                                                "topics": bagmod.MSGTYPES},
        "camera_path_clearance_m": clearance,
        "generation_seconds": seconds,
        "generation_phase_seconds": timings,
    }
    (output / "metadata.json").write_text(json.dumps(metadata, indent=2))
    _write_marker(output, cfg, complete=True)  # last: marks the scene usable
    return SceneInfo.from_dir(output, seconds=seconds)
