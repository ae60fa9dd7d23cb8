"""Relevancy of features to a text query against canonical negatives (LERF, Kerr et al. 2023).

For a feature f, a query embedding q and negatives n_1..n_M (all unit vectors in the teacher's space)::

    relevancy(f) = min_i softmax(tau * [<f, q>, <f, n_i>])[0] = min_i sigmoid(tau * (<f, q> - <f, n_i>))

0.5 means "as close to the query as to the closest negative"; the default threshold for a segmentation is 0.5.
LERF's negatives are "object", "things", "stuff", "texture" and its temperature 10 (CLIP's cosine similarities span
a narrow range).

Both are calibrated for CLIP. With the oracle teacher's sentence encoder (all-MiniLM-L6-v2), unrelated words can
be more similar to the query than to those negatives, so 0.5 may let several classes through, and a true synonym can
stay below it. The ranking is right for most synonyms; the threshold needs calibrating per teacher (the demo
scene's class names: docs/results/segmentation.md).
"""
from __future__ import annotations

import torch

DEFAULT_NEGATIVES = ("object", "things", "stuff", "texture")
DEFAULT_TAU = 10.0


def relevancy(features: torch.Tensor, query: torch.Tensor, negatives: torch.Tensor, tau: float = DEFAULT_TAU,
              chunk: int = 1 << 18) -> torch.Tensor:
    """[N] relevancy of ``features`` [N,D] to ``query`` [D] against ``negatives`` [M,D] (M >= 1); unit vectors
    expected (features of norm 0, e.g. empty space, score sigmoid(0) = 0.5 at most against each negative)."""
    if negatives.dim() != 2 or negatives.shape[0] < 1:
        raise ValueError("relevancy needs at least one negative")
    if query.shape[-1] != features.shape[-1] or negatives.shape[-1] != features.shape[-1]:
        raise ValueError(f"dimension mismatch: features {features.shape[-1]}, query {query.shape[-1]}, "
                         f"negatives {negatives.shape[-1]}")
    out = []
    for f in features.split(chunk):
        s_q = f @ query  # [n]
        s_n = f @ negatives.T  # [n, M]
        out.append(torch.sigmoid(tau * (s_q[:, None] - s_n)).min(dim=1).values)
    return torch.cat(out) if out else features.new_zeros(0)
