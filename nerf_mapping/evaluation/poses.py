"""Pose-refinement evaluation: synthetic pose noise, Sim(3) (Umeyama) alignment, rotation / translation errors,
and test-time pose optimisation of held-out views (field frozen). Refined poses are exported by
:mod:`nerf_mapping.export.transforms`.

Protocol (BARF's): a refined reconstruction lives in a gauge (a similarity transform) of its own. Errors are measured
after aligning the estimated camera centres to the ground-truth ones with a Sim(3) fit, and held-out views are first
mapped into the reconstruction's frame with the inverse of that fit and then refined photometrically against the
frozen field before PSNR is measured, so a correct map in a shifted gauge is not punished. The same protocol is
applied to runs without refinement, so the two PSNRs compare like with like.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from nerf_mapping.cameras import camera_directions, rays_from_c2w
from nerf_mapping.geometry import so3_exp
from nerf_mapping.rendering.renderer import render_rays
from nerf_mapping.pose.correction import apply_deltas, params_to_deltas


# ====================================================================== noise
def perturb_poses(c2w: torch.Tensor, rot_deg: float, trans: float, seed: int = 0,
                  keep_first: bool = True) -> torch.Tensor:
    """Add random rigid noise to c2w poses [N,3,4].

    Rotation: a random rotation vector per frame with i.i.d. Gaussian components of std ``rot_deg / sqrt(3)`` degrees
    (so the RMS rotation angle is ``rot_deg``), applied in the camera frame (the camera turns about its centre).
    Translation: i.i.d. Gaussian components of std ``trans / sqrt(3)`` (RMS offset ``trans``, scene units), in the
    world frame. ``keep_first`` leaves frame 0 exact: it defines the map frame, as the first odometry pose does
    (and it is the anchor of the ``fix_first`` gauge).
    """
    g = torch.Generator().manual_seed(int(seed))
    n = c2w.shape[0]
    w = torch.randn(n, 3, generator=g, dtype=torch.float64) * (math.radians(rot_deg) / math.sqrt(3.0))
    t = torch.randn(n, 3, generator=g, dtype=torch.float64) * (float(trans) / math.sqrt(3.0))
    if keep_first and n:
        w[0] = 0.0
        t[0] = 0.0
    c = c2w.double()
    rot = c[:, :3, :3] @ so3_exp(w)
    out = torch.cat([rot, c[:, :3, 3:4] + t[:, :, None]], -1)
    return out.to(c2w.dtype)


# ====================================================================== alignment and errors
def umeyama(src: np.ndarray, dst: np.ndarray, with_scale: bool = True) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity dst ~ s R src + t (Umeyama 1991). src, dst: [N,3]. Returns (s, R [3,3], t [3])."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / len(src)
    U, S, Vt = np.linalg.svd(cov)
    D = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        D[2, 2] = -1.0
    R = U @ D @ Vt
    var_s = (xs * xs).sum() / len(src)
    s = float(np.trace(np.diag(S) @ D) / var_s) if with_scale and var_s > 0 else 1.0
    t = mu_d - s * R @ mu_s
    return s, R, t


def apply_sim3(s: float, R: np.ndarray, t: np.ndarray, c2w) -> np.ndarray:
    """Apply x -> s R x + t to poses [N,3,4]: centres move, rotations get R (stay orthonormal)."""
    c = np.asarray(c2w, dtype=np.float64)
    out = np.empty_like(c[:, :3, :4])
    out[:, :, :3] = R[None] @ c[:, :3, :3]
    out[:, :, 3] = s * c[:, :3, 3] @ R.T + t
    return out


def invert_sim3(s: float, R: np.ndarray, t: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    return 1.0 / s, R.T, -(R.T @ t) / s


def rotation_errors_deg(est, gt) -> np.ndarray:
    """Geodesic angle between rotations [N,3,3(+)] in degrees."""
    a = np.asarray(est, dtype=np.float64)[:, :3, :3]
    b = np.asarray(gt, dtype=np.float64)[:, :3, :3]
    rel = np.swapaxes(a, -1, -2) @ b
    cos = (np.trace(rel, axis1=-2, axis2=-1) - 1.0) * 0.5
    vee = np.stack([rel[:, 2, 1] - rel[:, 1, 2], rel[:, 0, 2] - rel[:, 2, 0], rel[:, 1, 0] - rel[:, 0, 1]], -1)
    sin = 0.5 * np.linalg.norm(vee, axis=-1)
    return np.degrees(np.arctan2(sin, cos))  # accurate at small angles (arccos loses half the digits there)


def _chordal_mean_rotation(est: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """The rotation R [3,3] closest (chordal L2) to mapping the orientations of ``est`` onto those of ``gt``."""
    M = (gt[:, :, :3] @ np.swapaxes(est[:, :, :3], -1, -2)).sum(0)
    U, _, Vt = np.linalg.svd(M)
    return U @ np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))]) @ Vt


def align_poses(est, gt, with_scale: bool = True) -> tuple[np.ndarray, tuple[float, np.ndarray, np.ndarray]]:
    """Sim(3)-align estimated poses to ground truth via their camera centres. Returns (aligned est, (s, R, t)).

    The rotation of the fit comes from the centres (the standard ATE protocol). With fewer than 3 cameras (or
    degenerate centres) the rotations are used instead (chordal mean).
    """
    est = np.asarray(est, dtype=np.float64)[:, :3, :4]
    gt = np.asarray(gt, dtype=np.float64)[:, :3, :4]
    ce, cg = est[:, :, 3], gt[:, :, 3]
    spread = np.linalg.svd(ce - ce.mean(0), compute_uv=False) if len(ce) >= 3 else np.zeros(3)
    if len(ce) >= 3 and spread[1] > 1e-9 * max(spread[0], 1e-12):
        sim = umeyama(ce, cg, with_scale)
    else:
        R = _chordal_mean_rotation(est, gt)
        sim = (1.0, R, cg.mean(0) - R @ ce.mean(0))
    return apply_sim3(*sim, est), sim


def align_poses_by_orientation(est, gt, with_scale: bool = True):
    """Sim(3)-align with the rotation taken from the camera *orientations* (chordal L2 mean of R_gt R_est^T), then
    scale and translation from the centres with that rotation fixed. Returns (aligned est, (s, R, t)).

    A diagnostic beside :func:`align_poses`: when the cameras span a narrow arc (DTU), the centres pin down the
    rotation about the object poorly and correlated centre errors tilt the centre fit, which then adds its own
    rotation to every camera; aligning by the orientations does not (DTU's linear-init cameras:
    docs/results/poses.md).
    """
    est = np.asarray(est, dtype=np.float64)[:, :3, :4]
    gt = np.asarray(gt, dtype=np.float64)[:, :3, :4]
    R = _chordal_mean_rotation(est, gt)
    ce, cg = est[:, :, 3], gt[:, :, 3]
    xs, xd = ce - ce.mean(0), cg - cg.mean(0)
    den = float((xs * xs).sum())
    s = float(((xs @ R.T) * xd).sum() / den) if with_scale and den > 0 else 1.0
    sim = (s, R, cg.mean(0) - s * R @ ce.mean(0))
    return apply_sim3(*sim, est), sim


def pose_errors(est, gt, align: bool | str = True, unit_to_mm: float | None = None) -> dict:
    """Rotation (deg) and camera-centre (scene units of ``gt``) errors of ``est`` against ``gt``, after Sim(3)
    alignment when ``align`` (True / "centres": Umeyama on the camera centres, the protocol; "orientation":
    :func:`align_poses_by_orientation`). ``unit_to_mm`` adds millimetre variants (DTU)."""
    est = np.asarray(est, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    sim = None
    if align == "orientation":
        est, sim = align_poses_by_orientation(est, gt)
    elif align:
        est, sim = align_poses(est, gt)
    r = rotation_errors_deg(est, gt)
    t = np.linalg.norm(est[:, :3, 3] - gt[:, :3, 3], axis=-1)
    out = {
        "mean_rotation_deg": float(r.mean()), "median_rotation_deg": float(np.median(r)),
        "max_rotation_deg": float(r.max()),
        "mean_translation": float(t.mean()), "median_translation": float(np.median(t)),
        "max_translation": float(t.max()),
    }
    if unit_to_mm is not None:
        out["mean_translation_mm"] = float(t.mean() * unit_to_mm)
        out["median_translation_mm"] = float(np.median(t) * unit_to_mm)
    if sim is not None:
        out["sim3_scale"] = float(sim[0])
    return out


# ====================================================================== test-time pose optimisation
def test_time_optimize(trainer, cameras, images, init_c2w: torch.Tensor, steps: int = 200, rays_per_view: int = 1024,
                       lr: float = 2e-3, lr_final: float = 1e-4, masks=None, seed: int = 0) -> torch.Tensor:
    """Refine the poses of held-out views photometrically against the frozen field.

    cameras: Cameras of the views (intrinsics); images: list of uint8 [H,W,3]; init_c2w [V,3,4] initial poses in the
    reconstruction's frame. All views are optimised together (one batch of ``rays_per_view`` rays per view and
    step, own Adam with exponential lr decay); the field's parameters are frozen and restored afterwards.
    ``masks`` (bool [H,W] per view, or None): where the field was trained with ``mask_background`` (DTU), pixels
    outside a view's mask are matched against the background colour, as in training (DTU's backdrop is not in the
    field); otherwise the raw pixels are the target.
    Returns refined c2w [V,3,4].
    """
    v = init_c2w.shape[0]
    if steps <= 0 or v == 0:
        return init_c2w.clone()
    g = torch.Generator().manual_seed(seed)
    field = trainer.field
    saved = [(p, p.requires_grad) for p in field.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    params = torch.zeros(v, 6, requires_grad=True)
    opt = torch.optim.Adam([params], lr=lr)
    imgs = [im.reshape(-1, 3) for im in images]
    sizes = [(int(cameras.width[i]), int(cameras.height[i])) for i in range(v)]
    pix_masks = [m.reshape(-1) if m is not None else None for m in (masks or [None] * v)]
    base = init_c2w.float()
    appearance = trainer.appearance.mean()  # held-out views are not training frames: the mean appearance
    try:
        with trainer.lock:
            field.eval()
            for it in range(steps):
                for gr in opt.param_groups:
                    gr["lr"] = lr * (lr_final / lr) ** (it / max(steps - 1, 1))
                cam_idx, px, py, rgb = [], [], [], []
                for i in range(v):
                    w, h = sizes[i]
                    sel = torch.randint(0, w * h, (rays_per_view,), generator=g)
                    cam_idx.append(torch.full((rays_per_view,), i, dtype=torch.long))
                    px.append((sel % w).float() + 0.5)
                    py.append((sel // w).float() + 0.5)
                    m = pix_masks[i][sel] if pix_masks[i] is not None else None
                    rgb.append(trainer.target_rgb(imgs[i][sel].float() / 255.0, m))  # the training target
                cam_idx, px, py, rgb = (torch.cat(x) for x in (cam_idx, px, py, rgb))
                dirs_cam = camera_directions(cameras, cam_idx, px, py)
                d = params_to_deltas(params, "so3xr3")
                c2w = apply_deltas(base, d)[cam_idx]
                origins, dirs = rays_from_c2w(c2w, dirs_cam)
                out = render_rays(field, trainer.grid, origins, dirs, trainer.scene.near, trainer.scene.far,
                                  trainer.render_cfg, trainer.background, appearance=appearance)
                loss = ((out["rgb"] - rgb) ** 2).mean()
                opt.zero_grad(set_to_none=True)
                if int(out["n_samples"]) > 0 and loss.requires_grad:
                    loss.backward()
                    opt.step()
    finally:
        for p, rg in saved:
            p.requires_grad_(rg)
    with torch.no_grad():
        return apply_deltas(base, params_to_deltas(params.detach(), "so3xr3"))


def render_psnr(trainer, cameras, images, c2w: torch.Tensor, masks=None) -> dict:
    """Render every view at ``c2w`` [V,3,4] and score it: {"psnr", "per_view", (+ "psnr_masked")}."""
    from nerf_mapping.evaluation import psnr

    vals, vals_m = [], []
    for i in range(c2w.shape[0]):
        out = trainer.render(cameras, i, c2w=c2w[i])
        gt = images[i].float() / 255.0
        vals.append(psnr(out["rgb"], gt))
        if masks is not None:
            vals_m.append(psnr(out["rgb"], gt, masks[i]))
    res = {"psnr": float(np.mean(vals)) if vals else float("nan"), "per_view": [float(x) for x in vals]}
    if masks is not None and vals_m:
        res["psnr_masked"] = float(np.nanmean(vals_m))
    return res


def evaluate_heldout(trainer, est_train_c2w, gt_train_c2w, test_cameras, test_images, test_masks=None,
                     tto_steps: int = 200, rays_per_view: int = 1024) -> dict:
    """Held-out PSNR under the BARF protocol: GT test poses -> reconstruction frame (inverse Sim(3) fitted on the
    training cameras) -> test-time pose optimisation with the field frozen -> render and score.

    Returns {"psnr", "psnr_before_tto", (+ masked variants)}.
    """
    _, sim = align_poses(np.asarray(est_train_c2w, dtype=np.float64), np.asarray(gt_train_c2w, dtype=np.float64))
    inv = invert_sim3(*sim)
    init = torch.from_numpy(apply_sim3(*inv, test_cameras.c2w.double().numpy())).float()
    before = render_psnr(trainer, test_cameras, test_images, init, test_masks)
    refined = test_time_optimize(trainer, test_cameras, test_images, init, steps=tto_steps,
                                 rays_per_view=rays_per_view, masks=test_masks)
    after = render_psnr(trainer, test_cameras, test_images, refined, test_masks)
    res = {"psnr": after["psnr"], "psnr_before_tto": before["psnr"], "per_view": after["per_view"]}
    if "psnr_masked" in after:
        res["psnr_masked"] = after["psnr_masked"]
        res["psnr_masked_before_tto"] = before["psnr_masked"]
    return res


def refined_train_poses(trainer, train_c2w: torch.Tensor) -> torch.Tensor:
    """Refined training poses [F,3,4] (frame id i = i-th training frame, as ``offline.frame_store_from`` adds them)."""
    return trainer.pose.refined(train_c2w.float(), torch.arange(train_c2w.shape[0]))
