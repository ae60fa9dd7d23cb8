"""Image metrics (PSNR, SSIM) and the evaluation loop over a dataset split (with depth error where the split
has depth, :mod:`nerf_mapping.evaluation.depth`).

LPIPS is not computed: its backbone weights are downloaded at run time, which this project does not allow.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB for images in [0, 1]."""
    return -10.0 * math.log10(max(mse, 1e-12))


def psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """PSNR in dB of images in [0,1], [H,W,3]; with a bool mask [H,W] only masked pixels count."""
    err = (pred.float() - target.float()) ** 2
    if mask is not None:
        m = mask.bool()
        if not m.any():
            return float("nan")
        err = err[m]
    return psnr_from_mse(float(err.mean()))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] @ g[None, :]


def ssim(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Structural similarity (Wang et al. 2004; 11x11 Gaussian window, sigma 1.5), images [H,W,3] in [0,1]."""
    x = pred.float().permute(2, 0, 1)[None]
    y = target.float().permute(2, 0, 1)[None]
    c = x.shape[1]
    win = _gaussian_window().to(x)[None, None].repeat(c, 1, 1, 1)

    def filt(z):
        return F.conv2d(z, win, groups=c)

    mu_x, mu_y = filt(x), filt(y)
    sxx = filt(x * x) - mu_x**2
    syy = filt(y * y) - mu_y**2
    sxy = filt(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return float(s.mean())


def to_uint8(img: torch.Tensor) -> np.ndarray:
    return (img.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()


def evaluate(
    render_fn,
    scene,
    indices: list[int] | None = None,
    output_dir: Path | None = None,
    use_masks: bool = True,
    progress: bool = True,
) -> dict:
    """Render and score frames of a ``SceneData``.

    Args:
        render_fn: ``(cameras, index) -> dict`` with "rgb" [H,W,3] (e.g. ``Trainer.render``).
        scene: SceneData of the split to evaluate.
        indices: which frames (default: all).
        output_dir: if given, side-by-side renders (ground truth | render) and per-image metrics are written there.
        use_masks: masked PSNR where the dataset has masks (DTU).
    Returns:
        {"psnr", "ssim", "n_images", "seconds_per_image", "per_image": [...]} (+ "psnr_masked" when masks exist,
        + "depth_abs_median_m" when the split has depth maps and the render a "depth": the median over every valid
        pixel of |rendered z-depth - dataset depth| in metres, :mod:`nerf_mapping.evaluation.depth`).
    """
    import imageio.v3 as iio

    from nerf_mapping.evaluation.depth import depth_abs_errors, median_of, z_depth_image

    indices = list(range(len(scene.images))) if indices is None else indices
    if output_dir is not None:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    depth_errors = []  # per image: |z - depth| in metres at the valid pixels
    t_total = 0.0
    it = indices
    if progress:
        from tqdm import tqdm

        it = tqdm(indices, desc="eval", unit="img", dynamic_ncols=True)
    for i in it:
        t0 = time.perf_counter()
        out = render_fn(scene.cameras, i)
        t_total += time.perf_counter() - t0
        gt = scene.images[i].float() / 255.0
        pred = out["rgb"]
        row = {"index": int(i), "frame": int(scene.frame_indices[i]), "psnr": psnr(pred, gt), "ssim": ssim(pred, gt)}
        if use_masks and scene.masks is not None:
            row["psnr_masked"] = psnr(pred, gt, scene.masks[i])
        if getattr(scene, "depths", None) is not None and scene.depths[i] is not None and "depth" in out:
            err = depth_abs_errors(z_depth_image(out["depth"], scene.cameras, i), scene.depths[i],
                                   getattr(scene, "world_scale", 1.0))
            depth_errors.append(err)
            row["depth_abs_median_m"] = median_of([err])
        rows.append(row)
        if output_dir is not None:
            iio.imwrite(output_dir / f"{i:04d}_gt_vs_render.png", np.concatenate([to_uint8(gt), to_uint8(pred)], axis=1))
    res = {
        "psnr": float(np.mean([r["psnr"] for r in rows])) if rows else float("nan"),
        "ssim": float(np.mean([r["ssim"] for r in rows])) if rows else float("nan"),
        "n_images": len(rows),
        "seconds_per_image": t_total / max(len(rows), 1),
        "per_image": rows,
    }
    if rows and "psnr_masked" in rows[0]:
        res["psnr_masked"] = float(np.nanmean([r["psnr_masked"] for r in rows]))
    if depth_errors:
        res["depth_abs_median_m"] = median_of(depth_errors)
    if output_dir is not None:
        (output_dir / "metrics.json").write_text(json.dumps(res, indent=2))
    return res
