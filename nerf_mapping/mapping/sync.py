"""Image <-> odometry synchronisation without exact-time matching (no ROS types here).

Odometry is buffered; the pose at an image stamp is interpolated on SE(3) (slerp + lerp) between the two bracketing
odometry samples. Images outside the buffer, or whose bracketing samples are further apart than ``max_gap_s``, get no
pose (the reason is returned and counted), and odometry stamps going backwards are rejected and counted.
"""
from __future__ import annotations

import bisect
import threading
from collections import Counter

import numpy as np

from nerf_mapping.geometry import interpolate_se3

BEFORE_BUFFER = "before_buffer"
AFTER_BUFFER = "after_buffer"
GAP_TOO_LARGE = "gap_too_large"
EMPTY = "empty_buffer"
STAMP_BACKWARDS = "stamp_backwards"


class OdometryBuffer:
    """Time-ordered buffer of 4x4 poses keyed by int nanosecond stamps (thread-safe).

    max_age_s: samples older than (newest - max_age_s) are dropped.
    max_gap_s: largest allowed spacing of the two samples bracketing a query.
    tolerance_s: a query this close outside the buffer ends snaps to the end sample (covers clock jitter).
    """

    def __init__(self, max_age_s: float = 10.0, max_gap_s: float = 0.2, tolerance_s: float = 0.0):
        if max_age_s <= 0 or max_gap_s <= 0 or tolerance_s < 0:
            raise ValueError("max_age_s and max_gap_s must be > 0, tolerance_s >= 0")
        self.max_age_ns = int(max_age_s * 1e9)
        self.max_gap_ns = int(max_gap_s * 1e9)
        self.tol_ns = int(tolerance_s * 1e9)
        self._stamps: list[int] = []
        self._poses: list[np.ndarray] = []
        self._lock = threading.Lock()
        self.counts: Counter = Counter()

    def __len__(self) -> int:
        return len(self._stamps)

    def clear(self) -> None:
        with self._lock:
            self._stamps.clear()
            self._poses.clear()

    @property
    def span_ns(self) -> tuple[int, int] | None:
        with self._lock:
            return (self._stamps[0], self._stamps[-1]) if self._stamps else None

    def add(self, stamp_ns: int, T) -> bool:
        """Append a sample. Returns False (and counts ``stamp_backwards``) if the stamp is not newer than the last."""
        T = np.asarray(T, dtype=np.float64)
        if T.shape not in ((4, 4), (3, 4)):
            raise ValueError(f"pose must be 4x4 or 3x4, got {T.shape}")
        if T.shape == (3, 4):
            T = np.vstack([T, [0.0, 0.0, 0.0, 1.0]])
        stamp_ns = int(stamp_ns)
        with self._lock:
            if self._stamps and stamp_ns <= self._stamps[-1]:
                self.counts[STAMP_BACKWARDS] += 1
                return False
            self._stamps.append(stamp_ns)
            self._poses.append(T)
            cut = bisect.bisect_left(self._stamps, stamp_ns - self.max_age_ns)
            if cut > 0:
                del self._stamps[:cut]
                del self._poses[:cut]
            self.counts["added"] += 1
            return True

    def pose_at(self, stamp_ns: int, count: bool = True) -> tuple[np.ndarray | None, str]:
        """Interpolated 4x4 pose at ``stamp_ns`` and "ok", or (None, reason); failures are counted by reason
        (``count=False`` for a tentative lookup that will be retried, e.g. odometry not yet newer than the image)."""
        stamp_ns = int(stamp_ns)
        with self._lock:
            st = self._stamps
            if not st:
                reason = EMPTY
            elif stamp_ns < st[0] - self.tol_ns:
                reason = BEFORE_BUFFER
            elif stamp_ns > st[-1] + self.tol_ns:
                reason = AFTER_BUFFER
            else:
                i = bisect.bisect_left(st, stamp_ns)
                if i < len(st) and st[i] == stamp_ns:
                    return self._poses[i].copy(), "ok"
                if i == 0:
                    return self._poses[0].copy(), "ok"  # within tolerance before the first sample
                if i == len(st):
                    return self._poses[-1].copy(), "ok"  # within tolerance after the last sample
                t0, t1 = st[i - 1], st[i]
                if t1 - t0 > self.max_gap_ns:
                    reason = GAP_TOO_LARGE
                else:
                    alpha = (stamp_ns - t0) / (t1 - t0)
                    return interpolate_se3(self._poses[i - 1], self._poses[i], alpha), "ok"
            if count:
                self.counts[reason] += 1
            return None, reason
