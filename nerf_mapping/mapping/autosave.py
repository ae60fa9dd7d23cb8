"""Autosave and resume of the online map: a crash (even SIGKILL) loses at most one autosave period of mapping.

Files in the autosave directory (the node's ``output_dir/autosave``)::

    autosave_<step>_<unix ms>.pt          a map file (:mod:`.map_io`: field, occupancy grid, keyframes, pose
                                          corrections and drift spline, optimiser states, step count)
    autosave_<step>_<unix ms>.pt.sha256   its SHA-256, written only after the map file is complete

Both are written to a temporary name, flushed to disk and renamed, so a crash leaves either the complete pair or a
stray temporary file, never a half-written file under the final name. A save counts only when its digest file
exists and matches its bytes (a torn or corrupted file, e.g. from a failing disk, is skipped with a log line and the
previous save is used). Older saves are deleted only after a newer one is complete, keeping ``keep`` of them, so
the previous save stays intact whatever happens to the new one (a full or unwritable disk included: the error is
logged and counted, and the next attempt comes after ``retry_s``).
"""
from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from pathlib import Path

PREFIX = "autosave_"
SUFFIX = ".pt"
DIGEST = ".sha256"
_NAME = re.compile(rf"^{PREFIX}(\d+)_(\d+){re.escape(SUFFIX)}$")


def file_digest(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def saves(directory: Path) -> list[Path]:
    """Map files of ``directory`` (complete or not), newest first (step, then time)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_file():
            found.append(((int(m.group(1)), int(m.group(2))), p))
    return [p for _, p in sorted(found, reverse=True)]


def check(path: Path) -> str | None:
    """None when ``path`` is a complete save (its digest file exists and matches), else why not."""
    dig = path.with_name(path.name + DIGEST)
    if not dig.is_file():
        return "no checksum file (the save did not complete)"
    want = dig.read_text().strip().split()[0] if dig.stat().st_size else ""
    got = file_digest(path)
    if want != got:
        return f"checksum mismatch (file {got[:12]}..., recorded {want[:12] or 'nothing'}...)"
    return None


def latest_complete(directory: Path, log=None) -> Path | None:
    """The newest complete save in ``directory`` (incomplete or corrupt ones are logged and skipped)."""
    for p in saves(directory):
        why = check(p)
        if why is None:
            return p
        if log is not None:
            log.warning(f"autosave {p.name} skipped: {why}; trying the previous one")
    return None


def write(mapper, directory: Path, keep: int = 2) -> tuple[Path, int]:
    """Save ``mapper``'s map as a new autosave in ``directory``, then drop all but the ``keep`` newest complete
    saves; returns (path, step saved). Raises OSError (disk full, unwritable directory) with the previous saves
    untouched."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    stamp = int(time.time() * 1000)
    staging = d / f"{PREFIX}writing_{stamp}{SUFFIX}"  # not a save name: never listed, never loaded
    step = mapper.save(staging, meta={"autosave": True})["steps"]  # map_io writes <file>.tmp and renames it
    path = d / f"{PREFIX}{step:09d}_{stamp}{SUFFIX}"  # named by the step it holds (training went on meanwhile)
    _fsync(staging)
    os.replace(staging, path)
    _write_durably(path.with_name(path.name + DIGEST), (file_digest(path) + "  " + path.name + "\n").encode())
    complete = [p for p in saves(d) if p.with_name(p.name + DIGEST).is_file()]
    for old in complete[max(keep, 1):]:
        for f in (old, old.with_name(old.name + DIGEST)):
            f.unlink(missing_ok=True)
    for torn in saves(d):  # map files whose digest never came (a crash between the two renames): useless
        if torn != path and not torn.with_name(torn.name + DIGEST).is_file():
            torn.unlink(missing_ok=True)
    for stray in [*d.glob(f"{PREFIX}*.tmp"), *d.glob(f"{PREFIX}writing_*")]:  # left by a crash during a save
        if time.time() - stray.stat().st_mtime > 60:
            stray.unlink(missing_ok=True)
    return path, step


class Autosaver:
    """The mapper's autosave thread: every ``period_s`` while the map changes (its step count moved), a new save in
    ``directory`` (:func:`write`); on disk trouble the error is logged and counted and the next attempt comes after
    at most 10 s; a last save when ``stop`` is set. Reads from its mapper ``trainer``, ``save`` and ``intake``
    (counters)."""

    def __init__(self, mapper, directory: Path, period_s: float, keep: int):
        self.m = mapper
        self.directory = Path(directory)
        self.period_s = float(period_s)
        self.keep = int(keep)
        self.last: tuple | None = None
        """(path, step, seconds) of the newest autosave."""

    def save_now(self) -> Path:
        """Write an autosave now (OSError on disk trouble, previous saves intact)."""
        t0 = time.monotonic()
        path, step = write(self.m, self.directory, self.keep)
        self.last = (path, step, time.monotonic() - t0)
        self.m.intake.count("autosave_written")
        return path

    def run(self, stop: threading.Event) -> None:
        """The thread's body, until ``stop`` is set."""
        saved_step = int(self.m.trainer.step_count)
        wait = self.period_s
        while not stop.wait(wait):
            tr = self.m.trainer
            if len(tr.frames) == 0 or int(tr.step_count) == saved_step:
                wait = self.period_s
                continue
            try:
                self.save_now()
                saved_step = self.last[1]  # the step in the file (training goes on while it is written)
                wait = self.period_s
            except Exception as exc:  # noqa: BLE001 - disk full, unwritable: keep mapping, retry soon
                self.m.intake.count("autosave_failed", f"autosave failed (the previous save is kept): {exc}")
                wait = min(self.period_s, 10.0)
        tr = self.m.trainer
        if len(tr.frames) and int(tr.step_count) != saved_step:
            try:
                self.save_now()
            except Exception as exc:  # noqa: BLE001
                self.m.log.warning(f"final autosave failed: {exc}")
