"""The online map file: a trainer checkpoint (field, occupancy grid, pose corrections and drift spline, optimiser
states, step count) plus the keyframes that trained it, so a map reloads into a mapper that keeps training.

One file, written atomically by :meth:`Trainer.save`, read with ``torch.load(weights_only=True)``. Its ``extra``
holds the keyframes (:func:`nerf_mapping.mapping.keyframes.keyframes_extra` says what) and the caller's metadata
(the node's frame names, the semantics' teacher maps). Loading renumbers the frames 0..K-1 and selects their pose
parameters accordingly.
"""
from __future__ import annotations

from pathlib import Path

import torch

from nerf_mapping.mapping.keyframes import Keyframe, keyframes_extra, keyframes_from_extra
from nerf_mapping.training.trainer import Trainer

MAP_SUFFIX = ".pt"


def save_map(path: Path, trainer: Trainer, keyframes: dict[int, Keyframe], meta: dict | None = None) -> int:
    """Write ``trainer`` and its live keyframes (``keyframes``: frame id -> record) to ``path`` atomically; returns
    the step saved."""
    return trainer.save(path, extra={**(meta or {}), **keyframes_extra(trainer.frames, keyframes)})


def load_map(path: Path) -> tuple[Trainer, dict[int, Keyframe]]:
    """Read a map file: (trainer with its keyframes in a new frame store, frame id -> Keyframe)."""
    st = torch.load(path, map_location="cpu", weights_only=True)  # validated again by Trainer.load
    extra = st.get("extra", {}) if isinstance(st, dict) else {}
    frames, info, old_ids = keyframes_from_extra(extra)
    tr = Trainer.load(path, frames=frames)
    if old_ids and tr.pose.params.shape[0] > max(old_ids):
        tr.pose.select(old_ids)  # params, preconditioners and their flags, renumbered like the frame store
        tr.pose.rebuild_optimizer()
    return tr, info
