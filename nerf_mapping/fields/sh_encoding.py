"""Real spherical-harmonics encoding of view directions (degree 1..4), as used by Instant-NGP's color network."""
from __future__ import annotations

import torch


def sh_encode(directions: torch.Tensor, degree: int = 4) -> torch.Tensor:
    """Real SH basis up to ``degree`` (exclusive upper band index, i.e. degree**2 outputs).

    Args:
        directions: [N, 3] unit vectors.
        degree: 1..4 bands.
    Returns:
        [N, degree**2] basis values.
    """
    if not 1 <= degree <= 4:
        raise ValueError(f"sh degree must be in 1..4, got {degree}")
    x, y, z = directions.unbind(-1)
    out = [torch.full_like(x, 0.28209479177387814)]
    if degree > 1:
        out += [-0.4886025119029199 * y, 0.4886025119029199 * z, -0.4886025119029199 * x]
    if degree > 2:
        xx, yy, zz = x * x, y * y, z * z
        xy, yz, xz = x * y, y * z, x * z
        out += [
            1.0925484305920792 * xy,
            -1.0925484305920792 * yz,
            0.31539156525252005 * (2.0 * zz - xx - yy),
            -1.0925484305920792 * xz,
            0.5462742152960396 * (xx - yy),
        ]
    if degree > 3:
        out += [
            -0.5900435899266435 * y * (3 * xx - yy),
            2.890611442640554 * xy * z,
            -0.4570457994644658 * y * (4 * zz - xx - yy),
            0.3731763325901154 * z * (2 * zz - 3 * xx - 3 * yy),
            -0.4570457994644658 * x * (4 * zz - xx - yy),
            1.445305721320277 * z * (xx - yy),
            -0.5900435899266435 * x * (xx - 3 * yy),
        ]
    return torch.stack(out, dim=-1)
