"""Demo scene generation: render the labeled room along a handheld trajectory and write every output.

Output layout of ``generate_scene(cfg, DIR)``::

    DIR/
      transforms.json        nerfstudio (PINHOLE) poses = ground truth camera-to-world, OpenGL camera axes, world frame
      images/frame_00000.png RGB uint8
      depth/frame_00000.png  uint16 z-depth along the optical axis in millimetres (0 = no hit)
      labels/frame_00000.png uint8 class ids (see labels.json)
      labels.json            {"0": "unknown", "1": "floor", ...}
      mesh.ply               ground-truth mesh, per-vertex and per-face class_id (see mesh_io)
      metadata.json          config, intrinsics, frames/extrinsic, noise model, classes, room box, timings
      odometry.npz           odometry-rate stamps + ground-truth / noisy / bias poses, camera poses at image stamps
      bag/                   rosbag2 (mcap or sqlite3), see bag.py for topics
      .nerf_mapping_scene.json  marker: written first as incomplete, rewritten (atomically) as complete last

World frame = map = ground-truth odom frame: z up, metres, the room spans ``layout.ROOM_BOX`` (the corridor layout
``layout.CORRIDOR_BOX``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

MARKER = ".nerf_mapping_scene.json"
FORMAT_VERSION = 1
DEFAULT_SCENE_NAME = "demo_scene_v2"  # v2: the bag carries /camera/labels
LAYOUTS = ("room", "corridor")
# names generate_scene owns inside an output dir (only these are removed when overwriting)
_OUTPUT_NAMES = ("transforms.json", "metadata.json", "labels.json", "mesh.ply", "odometry.npz", "images", "depth",
                 "labels", "bag", MARKER)


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
    bag: Path | None
    num_frames: int
    seconds: float  # wall-clock generation time (0 when reused from cache)

    @staticmethod
    def from_dir(root: Path, seconds: float = 0.0) -> "SceneInfo":
        root = Path(root)
        marker = json.loads((root / MARKER).read_text())
        bag = root / "bag"
        return SceneInfo(root=root, transforms=root / "transforms.json", metadata=root / "metadata.json",
                         labels=root / "labels.json", mesh=root / "mesh.ply", odometry=root / "odometry.npz",
                         images_dir=root / "images", depth_dir=root / "depth", labels_dir=root / "labels",
                         bag=bag if bag.exists() else None, num_frames=int(marker["config"]["frames"]),
                         seconds=seconds)


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
    """Cache folder of the built-in demo scene: $NERF_MAPPING_CACHE (or ~/.cache/nerf_mapping)/demo_scene_v2."""
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
    period = 1e9 / cfg.odom_rate_hz
    first = t0 - 0.37 * period
    count = int(np.ceil((img[-1] - first) / period)) + 2
    odom = np.round(first + np.arange(count) * period).astype(np.int64)
    return img, odom, t0


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
    from .trajectory import (TrajectoryParams, base_to_camera_optical, camera_poses, camera_to_base_poses,
                             corridor_camera_poses, opencv_c2w_to_opengl)

    cfg.validate()
    t_begin = time.perf_counter()
    output = Path(output)
    _prepare_output(output, force)
    _write_marker(output, cfg, complete=False)
    for sub in ("images", "depth", "labels"):
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
    clearance = _check_clearance(renderer, np.concatenate([cams[:, :3, 3], gt_base[:, :3, 3]]))

    # --- render
    frames = []
    c2w_gl = opencv_c2w_to_opengl(cams)
    for i in tqdm(range(cfg.frames), desc=f"rendering the {cfg.layout} scene", unit="frame", disable=not progress):
        rgb, depth, labels = renderer.render(cams[i], intr, cfg.supersample)
        name = f"frame_{i:05d}.png"
        _save_png(output / "images" / name, rgb)
        depth_mm = np.clip(np.round(depth * 1000.0), 0, 65535).astype(np.uint16)
        _save_png(output / "depth" / name, depth_mm)
        _save_png(output / "labels" / name, labels)
        frames.append({
            "file_path": f"images/{name}",
            "transform_matrix": c2w_gl[i].tolist(),
            "depth_file_path": f"depth/{name}",
            "semantic_file_path": f"labels/{name}",
            "timestamp": int(img_ns[i]) * 1e-9,
            "timestamp_ns": int(img_ns[i]),
        })

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
    (output / "transforms.json").write_text(json.dumps(transforms, indent=1))

    # --- bag
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
            noisy_stream, gt_stream, t_base_cam, bagmod.extrinsic_custom_data(t_base_cam),
            load_labels=lambda i: np.asarray(Image.open(output / frames[i]["semantic_file_path"])))

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
            "depth": "depth/*.png: uint16 z-depth along the optical axis in millimetres (multiply by "
                     "depth_unit_scale_factor=0.001 for metres), 0 = no hit",
            "labels": "labels/*.png: uint8 class id per pixel (labels.json maps id -> name), 0 = unknown/no hit",
            "mesh": "mesh.ply: binary PLY, vertex/face property class_id; vertex colour = material base colour",
            "room": "closed rooms (floor, walls, ceiling): every ray from inside hits a surface",
            "layout": "room: the 5 m x 4 m demo room; corridor: a 30 m x 2.4 m corridor along x with three 5 m x 4 m "
                      "rooms behind doorways on its +y side, walked down its middle",
        },
        "intrinsics": {"model": "PINHOLE", "fx": intr.fx, "fy": intr.fy, "cx": intr.cx, "cy": intr.cy,
                       "width": intr.width, "height": intr.height, "distortion": [0.0] * 5},
        "frames": {"odom": bagmod.FRAME_ODOM, "base": bagmod.FRAME_BASE, "camera": bagmod.FRAME_CAMERA},
        "extrinsic_base_to_camera_optical": t_base_cam.tolist(),
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
    }
    (output / "metadata.json").write_text(json.dumps(metadata, indent=2))
    _write_marker(output, cfg, complete=True)  # last: marks the scene usable
    return SceneInfo.from_dir(output, seconds=seconds)
