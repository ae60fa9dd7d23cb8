"""Evaluation: image metrics and the held-out evaluation loop (:mod:`.images`), pose errors and test-time pose
optimisation (:mod:`.poses`), trajectory errors (:mod:`.trajectory`)."""

from nerf_mapping.evaluation.images import evaluate, psnr, psnr_from_mse, ssim, to_uint8

__all__ = ["evaluate", "psnr", "psnr_from_mse", "ssim", "to_uint8"]
