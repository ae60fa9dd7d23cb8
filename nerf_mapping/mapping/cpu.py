"""Where a process's CPU goes, per thread: the measurement behind the node's CPU plan (docs/results/online.md).

Linux keeps each thread's CPU time in ``/proc/self/task/<tid>/stat``; Python knows which of those threads it started
and their names (``threading.Thread(name=...)``: ``nerf_mapper_train``, ``nerf_mapper_candidates``, ...). A
:class:`CpuMeter` sampled now and then (the node: with its status, every second) adds each thread's CPU time since
the last sample to its name, so a short-lived thread (the query candidates' refresh) counts too, and a thread id
the kernel reuses does not count twice. Threads Python did not start (torch's OpenMP workers, the DDS middleware's)
add up under ``other``; the main thread is rclpy's executor in the node. A py-spy profile says the same and more, but
py-spy is not installable everywhere, and this costs one ``/proc`` read per thread per sample.
"""
from __future__ import annotations

import os
import re
import threading
import time
from collections import Counter

TASKS = "/proc/self/task"


def task_cpu_seconds() -> dict[int, float]:
    """{thread id: user + system CPU seconds} of this process's threads ({} where /proc is missing)."""
    try:
        tids = os.listdir(TASKS)
        tick = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return {}
    out = {}
    for tid in tids:
        try:
            with open(f"{TASKS}/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # after "pid (comm)": fields 3.. of proc(5)
        except (OSError, IndexError):
            continue  # the thread ended meanwhile
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14, 15)
    return out


def group_name(name: str) -> str:
    """A thread's name without its pool or sequence number (``ThreadPoolExecutor-0_1`` -> ``ThreadPoolExecutor``,
    ``Thread-3 (refresh)`` -> ``Thread (refresh)``)."""
    return re.sub(r"[-_]\d+(_\d+)?", "", name).strip() or name


class CpuMeter:
    def __init__(self):
        self._last: dict[int, tuple[str, float]] = {}
        self.totals: Counter = Counter()
        self._lock = threading.Lock()
        self._sample(count=False)  # the threads' time so far is not the meter's
        self.t0 = time.monotonic()

    def sample(self) -> None:
        """Add every thread's CPU time since the previous sample to its name."""
        self._sample(count=True)

    def _sample(self, count: bool) -> None:
        names = {t.native_id: group_name(t.name) for t in threading.enumerate()}
        names[threading.main_thread().native_id] = "main"
        with self._lock:
            for tid, sec in task_cpu_seconds().items():
                prev = self._last.get(tid)
                # a Python thread that just ended lingers a moment in /proc: it keeps its name
                name = names.get(tid) or (prev[0] if prev is not None else "other")
                # a thread new since the last sample (or a reused id: less time than before) counts from its start
                d = sec if prev is None or sec < prev[1] else sec - prev[1]
                self._last[tid] = (name, sec)
                if count:
                    self.totals[name] += d

    def cores(self) -> dict[str, float]:
        """{thread name: average cores used since the meter started}, largest first, with ``total``."""
        self.sample()
        wall = max(time.monotonic() - self.t0, 1e-6)
        with self._lock:
            res = {k: round(v / wall, 3) for k, v in self.totals.most_common()}
            res["total"] = round(sum(self.totals.values()) / wall, 3)
        return res
