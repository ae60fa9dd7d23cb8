"""``nerf-mapping bag convert``: turn any supported dataset (nerfstudio / Blender / DTU) into a rosbag2 laid out
exactly like the demo scene's bag, so real datasets (lego, DTU, fox) can be replayed to the mapping node.

Pure ``rosbags`` (no rclpy): the message writing is the demo scene's (:mod:`nerf_mapping.scene.bag`), the odometry
noise model is the demo scene's (:func:`nerf_mapping.scene.odometry.simulate_odometry_noise`).

Conventions of a converted bag
- The dataset's (normalised, see ``SceneData``) camera poses are the ground-truth camera poses in the map frame
  (map = ground-truth odom frame); units are scene units (odometry noise parameters are applied in those units).
- Frames are played in dataset order at ``image_rate_hz`` starting at ``start_time_s``, unless the dataset records
  its capture times (``SceneData.metadata["timestamps_s"]``, e.g. 7-Scenes' frame_index / 30 s): then each image is
  stamped at ``start_time_s`` + its time since the first converted frame.
- A dataset with depth maps (``SceneData.depths``: z-depth in scene units, 0 invalid) also gets
  ``/camera/depth/image_raw``: 16UC1 millimetres (``depth / world_scale * 1000``, rounded, clipped to 65535; 0 stays
  0 = invalid), aligned with and stamped like the colour images.
- ``base_link``: by default the demo rig's convention, ``T_base_cam = scene.trajectory.base_to_camera_optical()``
  (camera 10 cm ahead, 5 cm above base_link, pitched 10 deg down), so a converted bag and the demo bag are consumed
  identically; ``extrinsic="identity"`` makes base_link coincide with the optical frame instead.
- Ground-truth base motion between two images is the SE(3) interpolation (slerp + lerp,
  :func:`nerf_mapping.geometry.interpolate_se3`) of the base poses of those images, held constant before the first
  and after the last image; odometry is sampled on the demo's odometry grid (offset from image stamps) and corrupted
  by the demo's noise model (bias random walk + white jitter).
- ``/camera/camera_info`` carries each frame's own intrinsics and distortion: PINHOLE -> plumb_bob zeros, OPENCV ->
  plumb_bob [k1, k2, p1, p2, k3], OPENCV_FISHEYE -> equidistant [k1, k2, k3, k4]. EQUIRECTANGULAR has no ROS camera
  model and is rejected. All frames must have one image size.
- custom_data: the demo's extrinsic key plus the source dataset, its format, scene_box, unbounded, near/far and
  world_scale (``nerf_mapping.*`` keys).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from nerf_mapping.geometry.rigid import interpolate_poses



def camera_info_fields(cameras, i: int) -> dict:
    """ROS CameraInfo fields (distortion_model, d, k, p, width, height) of frame ``i`` of a ``Cameras``."""
    from nerf_mapping.cameras import CAMERA_MODELS

    model = CAMERA_MODELS[int(cameras.model[i])]
    k1, k2, k3, k4, p1, p2 = (float(x) for x in cameras.distortion[i].tolist())
    if model == "PINHOLE":
        dist_model, d = "plumb_bob", [0.0] * 5
    elif model == "OPENCV":
        dist_model, d = "plumb_bob", [k1, k2, p1, p2, k3]
    elif model == "OPENCV_FISHEYE":
        dist_model, d = "equidistant", [k1, k2, k3, k4]
    else:
        raise ValueError(f"camera model {model} has no ROS CameraInfo equivalent; cannot write it to a bag")
    fx, fy, cx, cy = (float(cameras.fx[i]), float(cameras.fy[i]), float(cameras.cx[i]), float(cameras.cy[i]))
    k = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    return {"distortion_model": dist_model, "d": np.asarray(d, float), "k": k,
            "p": np.concatenate([k, np.zeros((3, 1))], 1), "width": int(cameras.width[i]),
            "height": int(cameras.height[i])}


def convert_dataset_to_bag(
    data_path,
    output,
    odom_noise=None,
    image_rate_hz: float = 10.0,
    odom_rate_hz: float = 50.0,
    storage: str = "mcap",
    *,
    split: str = "all",
    downscale: int = 1,
    max_frames: int | None = None,
    seed: int = 0,
    extrinsic: str = "demo",
    start_time_s: float = 1_700_000_000.0,
    dataset=None,
) -> dict:
    """Write the rosbag2 directory ``output`` (must not exist) from the dataset at ``data_path``.

    ``odom_noise``: :class:`nerf_mapping.scene.odometry.OdometryNoiseParams` (None = the demo's defaults).
    ``dataset``: an already loaded ``SceneData`` (skips loading). Returns a summary dict (counts per topic, ...).
    """
    from nerf_mapping.geometry import opencv_to_opengl
    from nerf_mapping.scene import bag as bagmod
    from nerf_mapping.scene.generate import SceneConfig, odometry_grid, timeline
    from nerf_mapping.scene.sensors import depth_to_millimetres
    from nerf_mapping.scene.odometry import OdometryNoiseParams, body_twist, simulate_odometry_noise
    from nerf_mapping.scene.render import Intrinsics
    from nerf_mapping.scene.trajectory import base_to_camera_optical, inv_pose

    output = Path(output)
    if output.exists():
        raise FileExistsError(f"{output} already exists; choose another output (or delete it)")
    if storage not in ("mcap", "sqlite3"):
        raise ValueError(f"storage must be 'mcap' or 'sqlite3', got {storage!r}")
    if not (image_rate_hz > 0 and odom_rate_hz > 0):
        raise ValueError("rates must be positive")
    if extrinsic not in ("demo", "identity"):
        raise ValueError(f"extrinsic must be 'demo' or 'identity', got {extrinsic!r}")
    noise = odom_noise if odom_noise is not None else OdometryNoiseParams()
    if min(asdict(noise).values()) < 0:
        raise ValueError("odometry noise parameters must be >= 0")

    if dataset is None:
        from nerf_mapping.data import load_dataset

        dataset = load_dataset(data_path, split=split, downscale=downscale, max_frames=max_frames)
    data = dataset
    n = len(data)
    if n < 1:
        raise ValueError(f"{data_path}: no frames to convert")
    cams = data.cameras
    sizes = {(int(w), int(h)) for w, h in zip(cams.width.tolist(), cams.height.tolist())}
    if len(sizes) != 1:
        raise ValueError(f"{data_path}: frames have different image sizes {sorted(sizes)}; a camera topic needs one")
    infos = [camera_info_fields(cams, i) for i in range(n)]  # also rejects EQUIRECTANGULAR early

    # timeline: the demo's (images at image_rate from start_time, odometry grid offset and bracketing the images)
    # or the dataset's own capture times
    captured = frame_times_s(data)
    if captured is None:
        cfg = SceneConfig(frames=n, image_rate_hz=image_rate_hz, odom_rate_hz=odom_rate_hz, start_time_s=start_time_s)
        img_ns, odom_ns, t0 = timeline(cfg)
        timing = f"fixed rate {image_rate_hz:g} Hz"
    else:
        t0 = int(round(start_time_s * 1e9))
        img_ns = t0 + np.round((captured - captured[0]) * 1e9).astype(np.int64)
        odom_ns = odometry_grid(img_ns, odom_rate_hz)
        timing = "dataset timestamps (metadata timestamps_s)"

    # ground truth: camera poses (OpenGL c2w, scene frame) -> optical (OpenCV) -> base_link
    c2w = np.asarray(cams.c2w, np.float64)
    t_world_cam = np.tile(np.eye(4), (n, 1, 1))
    t_world_cam[:, :3, :4] = opencv_to_opengl(c2w)  # involution: OpenGL -> OpenCV axes
    t_base_cam = base_to_camera_optical() if extrinsic == "demo" else np.eye(4)
    base_keys = t_world_cam @ inv_pose(t_base_cam)
    gt_base = interpolate_poses(img_ns, base_keys, odom_ns)

    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x0D0]))
    odom_s = (odom_ns - t0).astype(np.float64) * 1e-9
    sim = simulate_odometry_noise(gt_base, odom_s, noise, rng)
    lin, ang = body_twist(gt_base, odom_s)
    jt2, jr2 = noise.jitter_trans**2, noise.jitter_rot**2
    gt_stream = bagmod.OdometryStream(odom_ns, gt_base, lin, ang, (1e-9,) * 6, (1e-9,) * 6)
    noisy_stream = bagmod.OdometryStream(odom_ns, sim.noisy, lin, ang, (jt2,) * 3 + (jr2,) * 3, (1e-4,) * 6)

    f0 = infos[0]
    intr = Intrinsics(float(f0["k"][0, 0]), float(f0["k"][1, 1]), float(f0["k"][0, 2]), float(f0["k"][1, 2]),
                      f0["width"], f0["height"])
    custom = {
        **bagmod.extrinsic_custom_data(t_base_cam),
        "nerf_mapping.scene": f"dataset:{data.format}",
        "nerf_mapping.source": str(data_path),
        "nerf_mapping.scene_box": json.dumps(np.asarray(data.scene_box, float).tolist()),
        "nerf_mapping.unbounded": json.dumps(bool(data.unbounded)),
        "nerf_mapping.near_far": json.dumps([float(data.near), float(data.far)]),
        "nerf_mapping.world_scale": json.dumps(float(data.world_scale)),
        "nerf_mapping.frame_indices": json.dumps([int(i) for i in data.frame_indices]),
    }

    def load_image(i: int) -> np.ndarray:
        return np.ascontiguousarray(data.images[i].numpy(), dtype=np.uint8)

    def load_depth(i: int) -> np.ndarray:  # scene units -> file units (metres) -> millimetres
        return depth_to_millimetres(data.depths[i].numpy().astype(np.float64) / float(data.world_scale))

    output.parent.mkdir(parents=True, exist_ok=True)
    counts = bagmod.write_scene_bag(output, storage, intr, img_ns, load_image, noisy_stream, gt_stream,
                                    t_base_cam, custom, camera_info_for=lambda i: infos[i],
                                    load_depth=load_depth if data.depths is not None else None)
    drift = np.linalg.norm(sim.noisy[-1, :3, 3] - gt_base[-1, :3, 3])
    return {"output": str(output), "format": data.format, "frames": n, "counts": counts,
            "duration_s": float((odom_ns[-1] - odom_ns[0]) * 1e-9), "final_odom_error": float(drift),
            "image_size": list(sizes.pop()), "distortion_model": f0["distortion_model"], "timing": timing,
            "depth": data.depths is not None}


def frame_times_s(data) -> np.ndarray | None:
    """[n] capture time (s) of each loaded frame from ``data.metadata["timestamps_s"]`` (one per loaded frame, or
    one per frame of the full dataset, indexed by ``data.frame_indices``), or None when the dataset has none.
    ValueError when they are not finite and strictly increasing."""
    ts = data.metadata.get("timestamps_s") if data.metadata else None
    if ts is None:
        return None
    ts = np.asarray(ts, np.float64).reshape(-1)
    n = len(data)
    if len(ts) != n:
        idx = np.asarray(data.frame_indices, np.int64)
        if not len(idx) or idx.max() >= len(ts):
            raise ValueError(f"metadata timestamps_s has {len(ts)} entries for {n} frames")
        ts = ts[idx]
    if not np.all(np.isfinite(ts)) or np.any(np.diff(ts) <= 0):
        raise ValueError("metadata timestamps_s must be finite and strictly increasing in frame order")
    return ts


# ---------------------------------------------------------------------------------------------------------------- CLI
def add_convert_arguments(p) -> None:
    from nerf_mapping.scene.odometry import OdometryNoiseParams

    d = OdometryNoiseParams()
    p.add_argument("--data", required=True, type=Path, help="dataset folder (nerfstudio / Blender / DTU)")
    p.add_argument("--output", "-o", required=True, type=Path, help="bag directory to create")
    p.add_argument("--split", default="all", choices=["all", "train", "val", "test"])
    p.add_argument("--downscale", type=int, default=1)
    p.add_argument("--max-frames", type=int, default=None, help="evenly subsample the frames")
    p.add_argument("--image-rate", type=float, default=10.0,
                   help="image rate in Hz (default 10; unused when the dataset records capture times)")
    p.add_argument("--odom-rate", type=float, default=50.0, help="odometry rate in Hz (default 50)")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    p.add_argument("--extrinsic", choices=("demo", "identity"), default="demo",
                   help="base_link -> camera_optical: the demo rig's (default) or identity")
    p.add_argument("--seed", type=int, default=0, help="odometry noise seed")
    g = p.add_argument_group("odometry noise (the demo scene's model; in scene units)")
    g.add_argument("--odom-noise", type=float, default=1.0, metavar="SCALE",
                   help="multiply every noise parameter below (0 = perfect odometry)")
    g.add_argument("--odom-trans-rw", type=float, default=d.trans_rw_sigma, help="x/y bias random walk (/sqrt(s))")
    g.add_argument("--odom-z-rw", type=float, default=d.z_rw_sigma, help="z bias random walk (/sqrt(s))")
    g.add_argument("--odom-yaw-rw", type=float, default=d.yaw_rw_sigma, help="yaw bias random walk (rad/sqrt(s))")
    g.add_argument("--odom-jitter-trans", type=float, default=d.jitter_trans, help="white jitter std")
    g.add_argument("--odom-jitter-rot", type=float, default=d.jitter_rot, help="white jitter std (rad)")


def run_convert(args) -> int:
    import sys

    from nerf_mapping.scene.odometry import OdometryNoiseParams

    s = args.odom_noise
    noise = OdometryNoiseParams(args.odom_trans_rw * s, args.odom_z_rw * s, args.odom_yaw_rw * s,
                                args.odom_jitter_trans * s, args.odom_jitter_rot * s)
    try:
        from nerf_mapping.data import DataError  # noqa: F401

        res = convert_dataset_to_bag(args.data, args.output, noise, args.image_rate, args.odom_rate, args.storage,
                                     split=args.split, downscale=args.downscale, max_frames=args.max_frames,
                                     seed=args.seed, extrinsic=args.extrinsic)
    except (ValueError, FileExistsError, FileNotFoundError) as e:  # DataError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"bag written to {res['output']} ({res['format']}, {res['frames']} frames, "
          f"{res['image_size'][0]}x{res['image_size'][1]}, {res['distortion_model']}, {res['duration_s']:.1f} s)")
    print(f"  image stamps: {res['timing']}; depth: {'yes' if res['depth'] else 'none in the dataset'}")
    for topic, c in res["counts"].items():
        print(f"  {topic}: {c}")
    return 0
