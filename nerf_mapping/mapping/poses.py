"""The mapper's pose state: the refined keyframe poses, the odometry drift they imply, the paths.

Odometry drifts, so the map frame (the model's world) and the odometry frame differ by ``T_map_odom``. With the drift
spline (``training.drift_knot_s > 0``, the default) a keyframe enters the map at its raw odometry pose and the spline
learns the drift; otherwise it enters at ``T_map_odom_est @ T_odom_cam`` (the latest estimate applied) and the
per-keyframe corrections learn the rest. Either way each keyframe's refined pose implies a ``T_map_odom``
(:mod:`nerf_mapping.pose.drift`), and the newest keyframe's is the current estimate.

Readers never touch the pose parameters while the training thread updates or grows them: :class:`PoseState` keeps a
snapshot of the corrections, refreshed after every step (:meth:`PoseState.snapshot`) and read by everyone else.
"""
from __future__ import annotations

import numpy as np
import torch

from nerf_mapping.geometry import model_c2w_to_optical_pose, optical_pose_to_model_c2w
from nerf_mapping.mapping.keyframes import Keyframe
from nerf_mapping.pose import drift
from nerf_mapping.pose.correction import apply_deltas
from nerf_mapping.training.trainer import Trainer


class PoseState:
    def __init__(self):
        self._snap: tuple | None = None  # (trainer, [F,3,4] float64 camera-frame corrections)

    def snapshot(self, tr: Trainer) -> np.ndarray | None:
        """Take the corrections of every frame id of ``tr`` now ([F,3,4] float64; None when refinement is off), under
        the trainer lock (the training thread updates and grows the parameters inside its steps)."""
        if not tr.pose.enabled:
            return None
        with tr.lock, torch.no_grad():
            d = tr.pose.all_deltas().detach().double().numpy().copy()
        self._snap = (tr, d)
        return d

    def deltas(self, tr: Trainer) -> np.ndarray | None:
        """The latest corrections snapshot of ``tr`` (taken now when there is none, e.g. right after a load)."""
        if not tr.pose.enabled:
            return None
        snap = self._snap
        if snap is not None and snap[0] is tr:
            return snap[1]
        return self.snapshot(tr)

    @staticmethod
    def refined_c2w(tr: Trainer, fid: int, c2w: torch.Tensor) -> torch.Tensor:
        """Model c2w of keyframe ``fid`` after pose refinement (unchanged when refinement is off)."""
        if not tr.pose.enabled or fid >= tr.pose.params.shape[0]:
            return c2w
        with torch.no_grad():
            return tr.pose(c2w[None], torch.tensor([fid]))[0]

    def implied_map_odom(self, tr: Trainer, entries) -> dict[int, np.ndarray]:
        """T_map_odom implied by each keyframe of ``entries`` [(frame id, Keyframe)]: its refined map pose times the
        inverse of its raw odometry camera pose. A keyframe the trainer has not seen yet implies the drift estimate
        it was inserted with."""
        d = self.deltas(tr)
        out: dict[int, np.ndarray] = {}
        todo = []
        for fid, kf in entries:
            if d is None or fid >= d.shape[0]:
                out[fid] = kf.T_map_odom
            else:
                todo.append((fid, kf))
        if todo:
            c2w = np.stack([optical_pose_to_model_c2w(drift.apply_drift(kf.T_map_odom, kf.T_odom_cam))
                            for _, kf in todo]).astype(np.float64)
            deltas = np.stack([d[fid] for fid, _ in todo])
            refined = apply_deltas(torch.from_numpy(c2w), torch.from_numpy(deltas)).numpy()
            for (fid, kf), r in zip(todo, refined):
                out[fid] = drift.implied_map_odom(model_c2w_to_optical_pose(r), kf.T_odom_cam)
        return out

    def drift_estimate(self, tr: Trainer, newest: tuple[int, Keyframe] | None) -> np.ndarray:
        """Current best T_map_odom (4x4): the one implied by the ``newest`` keyframe (identity before any)."""
        if newest is None:
            return np.eye(4)
        return drift.drift_estimate(self.implied_map_odom(tr, [newest]), [newest[0]])

    def paths(self, tr: Trainer, history: list[tuple[int, Keyframe]]):
        """(odometry path [(stamp, T_odom_base)], refined path [(stamp, T_map_base)], T_map_odom 4x4) of the
        keyframes in ``history``. Each keyframe of the refined path is moved by its own implied map->odom; map->odom
        itself comes from the newest keyframe."""
        odom_path = [(kf.stamp_ns, kf.T_odom_base) for _, kf in history]
        corrections = self.implied_map_odom(tr, history)
        T_map_odom = drift.drift_estimate(corrections, [fid for fid, _ in history])
        refined_path = drift.refined_path([(fid, kf.stamp_ns, kf.T_odom_base) for fid, kf in history], corrections,
                                          T_map_odom)
        return odom_path, refined_path, T_map_odom

    def correction_size(self, tr: Trainer, ids) -> tuple[float, float]:
        """Mean rotation (degrees) and translation of the learned corrections of keyframes ``ids`` (0, 0 without
        refinement)."""
        d = self.deltas(tr)
        if d is None:
            return 0.0, 0.0
        ids = [i for i in ids if i < d.shape[0]]
        if not ids:
            return 0.0, 0.0
        d = d[ids]  # [K,3,4] camera-frame corrections
        cos = np.clip((d[:, 0, 0] + d[:, 1, 1] + d[:, 2, 2] - 1.0) * 0.5, -1.0, 1.0)
        return float(np.degrees(np.arccos(cos)).mean()), float(np.linalg.norm(d[:, :, 3], axis=-1).mean())
