"""Online open-vocabulary semantics for the mapper: the teacher, its per-keyframe maps, the language field and text
queries. No ROS here; :class:`nerf_mapping.mapping.mapper.OnlineMapper` owns one :class:`OnlineSemantics` and the node
only forwards label images and query requests.

Threads: everything slow runs on this object's own worker thread, never on the training thread or a DDS callback:

- loading the teacher (the sentence encoder ~1 s, CLIP longer) when the mapper starts;
- adding the language field to the trainer (and again to a trainer loaded from a map, whose saved field weights
  are restored; its teacher maps are rebuilt from the map's keyframes);
- one teacher map per new keyframe (:func:`nerf_mapping.semantics.field.teacher_map`; the oracle ``labels`` teacher
  waits up to ``label_wait_s`` for the label image with the keyframe's stamp), and dropping those of evicted keyframes;
- the query candidates (surface points over the keyframes: seconds) on their own thread, once when the map has trained
  ``warm_after_steps`` steps and again when a query finds them older than ``candidates_max_age_s``.

A query (:meth:`OnlineSemantics.query`) runs on the caller's thread: a frozen copy of the language field
(milliseconds under the trainer lock), features at the cached candidates and the relevancy: well under a second for
~100k points on 2 cores. Only a query that comes before the warm-up has finished waits for the candidates.
"""
from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nerf_mapping.semantics.field import find_language_field
from nerf_mapping.semantics.labels import fit_labels
from nerf_mapping.semantics.relevancy import DEFAULT_NEGATIVES, DEFAULT_TAU

LABEL_BUFFER = 64  # label images kept while their keyframes are selected (by stamp)


@dataclass
class SemanticsConfig:
    teacher: str = ""
    """'' (off) | labels (per-pixel class ids from a label topic + ``class_names``) | clip (local CLIP weights)."""
    clip_path: str = ""
    """clip: local Hugging Face CLIP directory."""
    class_names: str = ""
    """labels: a JSON file {class id: name} (the demo scene's labels.json)."""
    stride: int = 4
    """labels: label-image pixels per teacher-map cell."""
    prompt_template: str = "a {} in a room"
    """labels: phrasing of names and queries for the sentence encoder."""
    label_wait_s: float = 2.0
    """labels: how long a keyframe waits for its label image (same stamp) before it trains without one."""
    threshold: float = 0.5
    """Default relevancy threshold of queries."""
    negatives: tuple[str, ...] = DEFAULT_NEGATIVES
    """Default canonical negatives of queries."""
    tau: float = DEFAULT_TAU
    """Sharpness of the relevancy: sigmoid(tau x (similarity to the query - similarity to a negative)), the worst
    negative counting (LERF's pairwise softmax)."""
    num_points: int = 100_000
    """Rays cast over the keyframes for the query candidates."""
    candidates_max_age_s: float = 30.0
    """A query finding older candidates refreshes them in the background (it answers with the old ones)."""
    warm_after_steps: int = 100
    """Compute the candidates in the background once the map has trained this many steps, so that the first query
    answers at once (0: only when a query asks)."""


class OnlineSemantics:
    def __init__(self, cfg: SemanticsConfig, mapper):
        self.cfg = cfg
        self.mapper = mapper
        self.log = mapper.log
        self.teacher = None
        self.error: str | None = None if cfg.teacher else "no teacher configured (semantics.teacher is empty)"
        self.ready = threading.Event()  # the teacher is loaded (or failed: see error)
        self._labels: OrderedDict[int, np.ndarray] = OrderedDict()  # stamp_ns -> uint8 [H,W] class ids
        self._labels_lock = threading.Lock()
        self._pending: deque = deque()  # (frame id, stamp_ns, keyframe image, enqueue time, trainer)
        self._cv = threading.Condition()
        self.kf_labels: dict[int, np.ndarray] = {}  # frame id -> keyframe-sized class ids (saved with maps)
        self._field_of = None  # the trainer whose language field is set up
        self._failed_for = None  # the trainer a language field could not be added to (see error)
        self._cands = None  # (trainer, Candidates, monotonic time)
        self._cands_lock = threading.Lock()
        self._refreshing = threading.Event()
        self._thread: threading.Thread | None = None
        self._refresh_thread: threading.Thread | None = None
        self.maps_built = 0

    @property
    def enabled(self) -> bool:
        return bool(self.cfg.teacher)

    # ------------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self.enabled:
            self._thread = threading.Thread(target=self._loop, name="nerf_mapper_semantics", daemon=True)
            self._thread.start()

    def join(self, timeout: float) -> None:
        """Wait for the worker and a running candidates refresh to end (after the mapper's stop): a thread still
        inside torch when the interpreter exits can abort the process ("terminate called without an active
        exception", the demo's node exited with -6 after its last queries)."""
        t_end = time.monotonic() + timeout
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=max(0.0, t_end - time.monotonic()))
        th = self._refresh_thread  # read after the worker ended: a refresh it started meanwhile is joined too
        if th is not None and th.is_alive():
            th.join(timeout=max(0.0, t_end - time.monotonic()))

    def wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    def _loop(self) -> None:
        self.load_teacher()
        waiting = 0
        while not self.mapper.stopping:
            with self._cv:
                if waiting or not self._pending:  # keyframes waiting for their label images: add_labels wakes us
                    self._cv.wait(0.05 if waiting else 0.2)
            try:
                waiting = self.process()
                self.warm_up()
            except Exception as exc:  # noqa: BLE001 - the worker never dies; the reason is logged
                self.mapper.intake.warn("semantics", f"semantics worker: {exc!r}")
                time.sleep(0.5)

    def load_teacher(self) -> None:
        """Build the configured teacher (on the worker thread; tests call it directly)."""
        from nerf_mapping.semantics.teachers import TeacherConfig, make_teacher

        if not self.enabled:
            self.ready.set()
            return
        t0 = time.monotonic()
        try:
            names = None
            if self.cfg.teacher == "labels":
                names = load_class_names(self.cfg.class_names)
            self.teacher = make_teacher(TeacherConfig(name=self.cfg.teacher, clip_path=self.cfg.clip_path,
                                                      stride=self.cfg.stride,
                                                      prompt_template=self.cfg.prompt_template), names)
            self.error = None
            self.log.info(f"semantics: teacher {self.teacher.name} ({self.teacher.dim}-D) ready in "
                          f"{time.monotonic() - t0:.1f} s")
        except Exception as exc:  # noqa: BLE001 - a bad teacher disables semantics, not the mapper
            self.error = f"teacher {self.cfg.teacher!r} unavailable: {exc}"
            self.log.error(f"semantics: {self.error}")
        finally:
            self.ready.set()

    # ------------------------------------------------------------------------------------------------ inputs
    def add_labels(self, stamp_ns: int, labels: np.ndarray) -> None:
        """A label image (uint8 [H,W] class ids) for the camera image with the same stamp."""
        if self.cfg.teacher != "labels":
            return
        with self._labels_lock:
            self._labels[int(stamp_ns)] = labels
            while len(self._labels) > LABEL_BUFFER:
                self._labels.popitem(last=False)
        self.wake()

    def on_keyframe(self, fid: int, stamp_ns: int, image: np.ndarray, trainer) -> None:
        """A keyframe entered ``trainer`` (called by the mapper's keyframe worker): its teacher map is built on the
        semantics worker."""
        if not self.enabled:
            return
        with self._cv:
            self._pending.append((int(fid), int(stamp_ns), image, time.monotonic(), trainer))
            self._cv.notify_all()

    # ------------------------------------------------------------------------------------------------ the worker
    def ensure_field(self, trainer):
        """The language field of ``trainer`` (added, or restored from a loaded map, on first use); None while the
        teacher is not ready or failed."""
        if self.teacher is None:
            return None
        ext = find_language_field(trainer)
        if ext is None:
            from nerf_mapping.semantics.field import new_language_field

            if self._failed_for is trainer:
                return None
            try:
                ext = new_language_field(trainer, self.teacher)
            except ValueError as exc:  # e.g. a loaded map whose field another teacher trained
                self._failed_for = trainer
                self.error = f"no language field for this map: {exc}"
                self.log.error(f"semantics: {self.error}")
                return None
            self.error = None
            self.log.info(f"semantics: language field added ({self.teacher.dim}-D features, teacher "
                          f"{self.teacher.name})")
        if self._field_of is not trainer:
            self._field_of = trainer
            self._restore_targets(trainer, ext)
        return ext

    def _restore_targets(self, trainer, ext) -> None:
        """Teacher maps of the keyframes a trainer already holds (a loaded map): class ids saved with the map for the
        labels teacher, the keyframe images for a dense teacher."""
        from nerf_mapping.semantics.field import teacher_map

        ids = trainer.frames.frame_ids()
        if not ids:
            return
        saved = (getattr(trainer, "extra", {}) or {}).get("keyframe_labels")
        n = 0
        for j, fid in enumerate(ids):
            labels = None
            if self.teacher.needs_labels:
                if saved is None or j >= len(saved) or saved[j].numel() == 0:
                    continue
                labels = saved[j].numpy()
                self.kf_labels[fid] = labels
            ext.set_target(fid, teacher_map(self.teacher, trainer.frames.image(fid).numpy(), labels))
            n += 1
        self.log.info(f"semantics: teacher maps of {n}/{len(ids)} loaded keyframes restored")

    def _take_labels(self, stamp_ns: int) -> np.ndarray | None:
        with self._labels_lock:
            return self._labels.pop(stamp_ns, None)

    def process(self) -> int:
        """One round of the worker: the field of the current trainer, teacher maps of pending keyframes, targets of
        evicted keyframes dropped. Returns how many keyframes still wait for their label images."""
        from nerf_mapping.semantics.field import teacher_map

        trainer = self.mapper.trainer
        ext = self.ensure_field(trainer) if self.teacher is not None else None
        if ext is None:
            with self._cv:
                self._pending.clear()  # no teacher or no field: nothing to build (the reason is in self.error)
            return 0
        wait = []
        while True:
            with self._cv:
                if not self._pending:
                    break
                item = self._pending.popleft()
            fid, stamp_ns, image, t_enq, tr = item
            if tr is not trainer:
                continue  # a map was loaded since: that keyframe is gone
            labels = None
            if self.teacher.needs_labels:
                labels = self._take_labels(stamp_ns)
                if labels is None:
                    if time.monotonic() - t_enq < self.cfg.label_wait_s:
                        wait.append(item)
                        continue
                    self.mapper.intake.count("semantics_no_labels", f"keyframe {fid}: no label image with its stamp "
                                                             f"within {self.cfg.label_wait_s} s: no language target")
                    continue
                labels = fit_labels(labels, image.shape[1], image.shape[0])
                self.kf_labels[fid] = labels
            ext.set_target(fid, teacher_map(self.teacher, image, labels))
            self.maps_built += 1
            self.mapper.intake.count("semantics_teacher_maps")
        if wait:
            with self._cv:
                self._pending.extendleft(reversed(wait))
        live = set(trainer.frames.frame_ids())
        for fid in [f for f in list(ext.targets) if f not in live]:
            ext.drop_target(fid)
            self.kf_labels.pop(fid, None)
        return len(wait)

    # ------------------------------------------------------------------------------------------------ maps
    def map_extra(self, ids: list[int]) -> dict:
        """What a saved map needs to rebuild the teacher maps: per keyframe (``ids``, frame-store order) its class
        ids for the labels teacher (empty tensors where none)."""
        if not self.enabled or self.teacher is None or not self.teacher.needs_labels:
            return {}
        return {"keyframe_labels": [torch.from_numpy(np.array(self.kf_labels[i], dtype=np.uint8)) if i in self.kf_labels
                                    else torch.zeros(0, dtype=torch.uint8) for i in ids]}

    def on_map_loaded(self) -> None:
        self.kf_labels = {}
        with self._cands_lock:
            self._cands = None
        self.wake()

    # ------------------------------------------------------------------------------------------------ queries
    def _candidates(self, trainer, num_points: int):
        from nerf_mapping.export.mesh import snapshot
        from nerf_mapping.semantics.query import candidate_points

        def stop_check(done: int, total: int) -> None:  # per view: a stopping mapper does not wait for the rest
            if self.mapper.stopping:
                raise InterruptedError("the mapper is stopping")

        snap = snapshot(trainer)
        c = candidate_points(snap, num_points, progress=stop_check)
        return c._replace(step=int(trainer.step_count))

    def _refresh_async(self, trainer) -> None:
        """Compute ``trainer``'s candidates on their own thread (one at a time) and cache them."""
        with self._cands_lock:
            if self._refreshing.is_set():
                return
            self._refreshing.set()

        def refresh():
            try:
                c = self._candidates(trainer, self.cfg.num_points)
                with self._cands_lock:
                    if self.mapper.trainer is trainer:
                        self._cands = (trainer, c, time.monotonic())
            except InterruptedError:
                pass
            except Exception as exc:  # noqa: BLE001 - the next query computes them itself
                self.mapper.intake.warn("semantics_candidates", f"candidate points failed: {exc!r}")
            finally:
                self._refreshing.clear()

        self._refresh_thread = threading.Thread(target=refresh, name="nerf_mapper_candidates", daemon=True)
        self._refresh_thread.start()

    def warm_up(self) -> None:
        """Candidates before the first query: once the map has trained ``warm_after_steps`` steps with a language
        field (a first query would otherwise wait for them: ~30 s beside training on 2 cores in the demo)."""
        trainer = self.mapper.trainer
        with self._cands_lock:
            have = self._cands is not None and self._cands[0] is trainer
        if (have or self.mapper.stopping or self.cfg.warm_after_steps <= 0 or trainer.step_count < self.cfg.warm_after_steps
                or self._refreshing.is_set()):
            return
        ext = find_language_field(trainer)
        if ext is not None and ext.targets and len(trainer.frames):
            self._refresh_async(trainer)

    def candidates(self, trainer, timeout: float = 300.0):
        """Cached candidates of ``trainer``: computed now when there are none (or awaited when the warm-up is
        computing them), refreshed in the background when older than ``candidates_max_age_s``."""
        t0 = time.monotonic()
        while self._refreshing.is_set() and time.monotonic() - t0 < timeout:
            with self._cands_lock:
                cached = self._cands
            if cached is not None and cached[0] is trainer:
                break  # a refresh of candidates we already have: answer with those
            time.sleep(0.05)
        with self._cands_lock:
            cached = self._cands
        if cached is None or cached[0] is not trainer:
            c = self._candidates(trainer, self.cfg.num_points)
            with self._cands_lock:
                self._cands = (trainer, c, time.monotonic())
            return c
        if time.monotonic() - cached[2] > self.cfg.candidates_max_age_s:
            self._refresh_async(trainer)
        return cached[1]

    def check_ready(self, trainer):
        """The language field of ``trainer`` when queries can run, else ValueError with the reason."""
        if not self.enabled:
            raise ValueError("semantics are off: set semantics.teacher (labels or clip) to train a language field")
        if not self.ready.is_set():
            raise ValueError(f"the {self.cfg.teacher} teacher is still loading: try again in a few seconds")
        if self.teacher is None or self._failed_for is trainer:
            raise ValueError(self.error or "no teacher")
        ext = find_language_field(trainer)
        if ext is None or len(trainer.frames) == 0:
            raise ValueError("the map has no language field yet (no keyframes)")
        if not ext.targets:
            raise ValueError("the language field has no teacher maps yet" +
                             (" (no label images received: check the label topic)" if self.cfg.teacher == "labels"
                              else ""))
        return ext

    def query(self, text: str, threshold: float | None = None, negatives=None):
        """An open-vocabulary 3D segmentation of the current map (model = map frame): the query module's
        ``Segmentation`` plus the candidates' age. ValueError (with the reason) for bad requests or a map that
        cannot answer yet."""
        from nerf_mapping.semantics.query import language_snapshot, segment
        from nerf_mapping.semantics.teachers import check_text

        text = check_text(text)
        cfg = self.query_config(threshold, negatives)
        trainer = self.mapper.trainer
        self.check_ready(trainer)
        field = language_snapshot(trainer)
        cands = self.candidates(trainer)
        return segment(field, self.teacher, cands, text, cfg), cands


    def query_config(self, threshold: float | None = None, negatives=None):
        """A query's settings: the request's where given, else the configured defaults (ValueError when invalid)."""
        from nerf_mapping.semantics.query import QueryConfig

        return QueryConfig(threshold=self.cfg.threshold if threshold is None else threshold,
                           negatives=tuple(negatives) if negatives else tuple(self.cfg.negatives), tau=self.cfg.tau,
                           num_points=self.cfg.num_points).validate()

    def relevancy_view(self, text: str, threshold: float | None = None, negatives=None, width: int = 160):
        """(uint8 [H,W,3] picture of the newest keyframe's view: the map in grey, heat colours where the relevancy to
        ``text`` reaches the threshold; that keyframe's stamp)."""
        from nerf_mapping.export.mesh import snapshot
        from nerf_mapping.semantics.query import language_snapshot, relevancy_overlay, view_relevancy
        from nerf_mapping.semantics.teachers import check_text

        text = check_text(text)
        cfg = self.query_config(threshold, negatives)
        self.check_ready(self.mapper.trainer)
        view = self.mapper.views.latest_keyframe_view(width)
        if view is None:
            raise ValueError("no keyframe yet")
        trainer, cams, c2w, stamp = view
        r, rgb = view_relevancy(snapshot(trainer, cams), language_snapshot(trainer), self.teacher, cams, 0, text, cfg,
                                c2w=c2w)
        return relevancy_overlay(rgb, r, cfg.threshold), stamp


def load_class_names(path: str) -> dict[int, str]:
    """{class id: name} from a JSON file (ValueError with the reason)."""
    if not str(path):
        raise ValueError("the labels teacher needs semantics.class_names: a JSON file {class id: name}")
    p = Path(path).expanduser()
    try:
        raw = json.loads(p.read_text())
        names = {int(k): str(v) for k, v in raw.items()}
    except (OSError, ValueError, AttributeError) as exc:
        raise ValueError(f"cannot read class names from {p}: {exc}") from None
    if not names:
        raise ValueError(f"{p}: no class names")
    return names
