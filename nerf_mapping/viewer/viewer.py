"""The browser viewer: watch and query the live map in a web browser, beside RViz.

What a browser shows (http://host:port, ``viewer.port``): the keyframe camera frustums at their refined poses, the
odometry path beside the refined path, the current camera; the map rendered from the browser's own camera as the
user moves it; the latest exported mesh and the latest query cloud (relevancy colours), each toggled in a panel; a
text box that runs an open-vocabulary query; buttons for ExportMesh and SaveMap; the status (steps, keyframes,
drops, training PSNR).

Why viser (https://viser.studio, PyPI ``viser``) and not a hand-written page: it is a maintained library (the
nerfstudio viewer is built on it) whose wheel ships its own prebuilt web client and serves it over one websocket,
so it works offline (no CDN, no npm); it already streams each browser's camera (pose, field of view, window size)
to Python and takes a per-browser background image, which is exactly the loop "render the map from the user's
camera"; and it has the scene primitives (frustums, line segments, meshes, point clouds) and panel widgets (text,
buttons, checkboxes, markdown) this needs. A hand-written page would need its own WebGL scene, orbit controls,
message protocol and widgets: hundreds of lines of JavaScript to keep working and test, for less.

One code path: the viewer calls :class:`~nerf_mapping.mapping.mapper.OnlineMapper` through the same methods the
node's services call (``views.render_view``, ``views.export_mesh``, ``semantics.query``, ``save``, ``status``,
``input_stats``, ``pose_state``), so it works beside the node, in ``benchmark online`` or any script that holds a
mapper, and offline on a loaded map (``nerf-mapping view``). The ROS layer only starts and stops it.

Threads (none of them is the training thread): viser's event loop runs the camera callbacks, which only record the
newest camera of each browser and wake the render worker (a flood of camera moves coalesces: only the latest pose
is ever rendered); one render worker renders and sends; a scene thread refreshes the status, frustums, paths and the
current camera every ``scene_period_s`` (every 10 s while no browser is connected); one action thread runs queries,
exports and saves (one at a time, a second request is refused while one runs); meshes of the node's ExportMesh are
decimated for the browser on a thread of their own. Mapper state is read as the node's status publisher reads it:
records copied under the mapper's lock, refined poses from the pose snapshot.

Render policy (:meth:`Viewer._next_job`): a moving camera is rendered coarse (``moving_width``, smaller when the
recent renders' cost per ray predicts more than ``moving_budget_s``), then once refined (``still_width``) when it has
been still for ``still_delay_s``; a still view is refreshed at most every ``refresh_period_s`` and only after the map
trained. Each render goes through ``views.render_view``, whose ``render_budget_s`` bounds it and which pauses
training while it renders; the duty cycle bounds how often: after a render of d seconds the next waits
d x (1 / duty - 1), with ``moving_duty`` while a camera moves and ``idle_duty`` for refreshes, so an attached but
idle browser costs training a few percent.

Coordinates: the viser world is the map frame (z up). A browser camera is an OpenCV camera (x right, y down,
z forward; viser's ``wxyz`` / ``position`` are R, t of ``p_world = R p_camera + t``), i.e. the optical frame that
``render_view`` takes as ``T_map_optical``. ``render_view`` renders with the mapped camera's intrinsics; the
browser's window generally has another aspect, so each browser's vertical field of view is set (``match_fov``) so
that its window sees a part of what the camera saw, and the render is cropped (or framed) to the window
(:func:`fit_to_window`): the render lines up with the frustums and paths drawn over it.

Bad input: a query text is stripped of control characters and refused past ``max_query_chars``; a non-finite camera
pose is dropped; a browser that disconnects mid-render has its result dropped; every refusal is counted
(:meth:`Viewer.stats`, and ``viewer_*`` reasons in the mapper's input counters) and nothing escapes into the mapper.
"""
from __future__ import annotations

import logging
import math
import threading
import time
import unicodedata
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from nerf_mapping.viewer.config import ViewerConfig

COARSE, REFINED, REFRESH = "coarse", "refined", "refresh"
IDLE_SCENE_PERIOD_S = 10.0  # scene updates while no browser is connected (a connecting one triggers one at once)
FIRST_DELAY_S = 0.15  # a new browser reports viser's default camera first and the initial camera right after it
FILL = (24, 24, 28)  # window parts the mapped camera never saw (only without match_fov)
KEYFRAME_COLOR = (60, 120, 255)
CURRENT_COLOR = (235, 50, 50)
ODOM_COLOR = (255, 150, 0)
REFINED_COLOR = (40, 200, 90)


# ---------------------------------------------------------------------------------------------------- pure helpers
def clean_query(text: Any, max_chars: int = 200) -> str:
    """A query as typed in the browser: control and format characters are dropped (tabs and newlines become spaces),
    whitespace is folded; ValueError when nothing is left or it is longer than ``max_chars`` characters (the mapper
    bounds it again in bytes)."""
    if not isinstance(text, str):
        raise ValueError("the query must be text")
    if len(text) > 20 * max_chars:  # bound the work on a huge paste before scanning it
        raise ValueError(f"query longer than {max_chars} characters")
    t = "".join((" " if ch.isspace() else "") if unicodedata.category(ch)[0] == "C" else ch for ch in text)
    t = " ".join(t.split())
    if not t:
        raise ValueError("empty query")
    if len(t) > max_chars:
        raise ValueError(f"query longer than {max_chars} characters")
    return t


def pose_from_viser(wxyz, position) -> np.ndarray:
    """4x4 ``T_map_optical`` from a viser camera (OpenCV convention: see the module docstring)."""
    w, x, y, z = (float(v) for v in wxyz)
    n = math.sqrt(w * w + x * x + y * y + z * z)
    if not n > 0.0 or not math.isfinite(n):
        raise ValueError("camera orientation is not a rotation")
    w, x, y, z = w / n, x / n, y / n, z / n
    T = np.eye(4)
    T[:3, :3] = [[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                 [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                 [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]]
    T[:3, 3] = np.asarray(position, dtype=np.float64)
    if not np.isfinite(T).all():
        raise ValueError("camera pose is not finite")
    return T


def wxyz_from_matrix(R: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) of a rotation matrix."""
    import viser.transforms as vtf

    return np.asarray(vtf.SO3.from_matrix(np.asarray(R, dtype=np.float64)[:3, :3]).wxyz)


def camera_tan(intrinsics: dict | None, aspect: float) -> tuple[float, float]:
    """Half extents (tan of the half angles, x and y) of what ``render_view`` renders: the camera info's field of
    view, or without one its default 60 degrees horizontal at the window's ``aspect``."""
    if intrinsics and intrinsics.get("width") and intrinsics.get("fx"):
        return (0.5 * intrinsics["width"] / intrinsics["fx"], 0.5 * intrinsics["height"] / intrinsics["fy"])
    tx = math.tan(math.radians(30.0))
    return tx, tx / max(aspect, 1e-3)


def matched_fov(cam: tuple[float, float], aspect: float) -> float:
    """Vertical field of view (radians) of a window of ``aspect`` that sees only what the camera (half extents
    ``cam``) saw, as much of it as the aspect allows."""
    return 2.0 * math.atan(min(cam[1], cam[0] / max(aspect, 1e-3)))


def fit_to_window(img: np.ndarray, cam: tuple[float, float], win: tuple[float, float]) -> np.ndarray:
    """The render ``img`` (seen with half extents ``cam``) as the browser window sees it (half extents ``win``):
    cropped where the window sees less, framed with :data:`FILL` where it sees more, at the render's pixel density
    (nearest pixel; the browser scales the image to the window)."""
    rh, rw = img.shape[:2]
    ow = int(np.clip(round(rw * win[0] / cam[0]), 8, 4 * rw))
    oh = int(np.clip(round(rh * win[1] / cam[1]), 8, 4 * rh))
    if (ow, oh) == (rw, rh) and abs(win[0] - cam[0]) < 1e-6 and abs(win[1] - cam[1]) < 1e-6:
        return img
    u = ((np.arange(ow) + 0.5) / ow * 2.0 - 1.0) * win[0]  # tan of each output column's angle
    v = ((np.arange(oh) + 0.5) / oh * 2.0 - 1.0) * win[1]
    cols = np.floor((u / cam[0] + 1.0) * 0.5 * rw).astype(np.int64)
    rows = np.floor((v / cam[1] + 1.0) * 0.5 * rh).astype(np.int64)
    out = np.empty((oh, ow, 3), dtype=np.uint8)
    out[:] = FILL
    ci, ri = (cols >= 0) & (cols < rw), (rows >= 0) & (rows < rh)
    out[np.ix_(ri, ci)] = img[np.ix_(rows[ri], cols[ci])]
    return out


def frustum_segments(poses: np.ndarray, tan_xy: tuple[float, float], scale: float) -> np.ndarray:
    """Wire frustums ([N*8, 2, 3]: apex to the four corners, and the image rectangle at depth ``scale``) of optical
    camera poses ``poses`` [N,4,4]."""
    if len(poses) == 0:
        return np.zeros((0, 2, 3))
    tx, ty = tan_xy
    corners = np.array([[-tx, -ty, 1.0], [tx, -ty, 1.0], [tx, ty, 1.0], [-tx, ty, 1.0]]) * scale
    c = np.einsum("nij,kj->nki", poses[:, :3, :3], corners) + poses[:, None, :3, 3]  # [N,4,3]
    apex = np.repeat(poses[:, None, :3, 3], 4, axis=1)
    rect = np.stack([c, np.roll(c, -1, axis=1)], axis=2)  # [N,4,2,3]
    rays = np.stack([apex, c], axis=2)
    return np.concatenate([rays, rect], axis=1).reshape(-1, 2, 3)


def polyline_segments(points: np.ndarray, max_points: int) -> np.ndarray:
    """[M-1, 2, 3] segments through ``points`` [M,3], evenly subsampled to ``max_points`` (the last one kept)."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if len(points) > max_points > 1:
        idx = np.unique(np.linspace(0, len(points) - 1, max_points).round().astype(np.int64))
        points = points[idx]
    if len(points) < 2:
        return np.zeros((0, 2, 3))
    return np.stack([points[:-1], points[1:]], axis=1)


# ---------------------------------------------------------------------------------------------------- the viewer
@dataclass
class ClientView:
    """One browser: its newest camera (replaced by every camera message: coalescing) and what was last sent to it."""

    client: Any
    client_id: int
    T: np.ndarray | None = None
    fov: float = 1.0
    aspect: float = 4.0 / 3.0
    seq: int = 0  # camera changes received
    moved_at: float = 0.0  # monotonic time of the newest camera change
    done_seq: int = -1  # the camera change rendered last
    done_quality: str = ""
    done_at: float = 0.0
    done_step: int = -1
    done_trainer: Any = None
    fov_sent: float = 0.0
    fov_sent_at: float = -1e9
    frames: int = 0  # background images sent
    first_frame_at: float | None = None
    last_image: np.ndarray | None = field(default=None, repr=False)


class Viewer:
    def __init__(self, mapper, cfg: ViewerConfig | None = None, output_dir: Path | str | None = None, log=None,
                 save_meta: dict | None = None, on_mesh: Callable[[Any], Any] | None = None, label: str = ""):
        """A viewer of ``mapper`` (:class:`~nerf_mapping.mapping.mapper.OnlineMapper`). ``output_dir``: where the
        Save map and Export mesh buttons write (None: buttons off); ``save_meta``: metadata saved with a map (the
        node's frame names); ``on_mesh(geometry)``: also called with an exported mesh (the node publishes it on
        ``~/mesh``); ``log``: anything with ``info`` / ``warning`` / ``error``."""
        self.mapper = mapper
        self.cfg = cfg or ViewerConfig()
        self.output_dir = Path(output_dir).expanduser().resolve() if output_dir else None
        self.log = log or logging.getLogger("nerf_mapping.viewer")
        self.save_meta = dict(save_meta or {})
        self.on_mesh = on_mesh
        self.label = label or "nerf_mapping"
        self.server = None
        self._lock = threading.Lock()  # guards _views, counters and the duty-cycle state (never held over a render)
        self._cv = threading.Condition(self._lock)
        self._views: dict[int, ClientView] = {}
        self._gone: set[int] = set()  # browsers that left: a camera message of theirs still queued is ignored
        self._stop = threading.Event()
        self._scene_wake = threading.Event()  # a browser connected: update the scene now
        self._threads: list[threading.Thread] = []
        self._actions = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nerf_viewer_action")
        self._pictures = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nerf_viewer_mesh")  # show_mesh
        self._busy: str | None = None  # the action running (query / export / save)
        self.counts: Counter = Counter()
        self._last_end = 0.0  # monotonic end of the last render
        self._last_dur = 0.0  # its duration (s)
        self.last_render: dict = {}
        self.last_query = None  # the Segmentation shown
        self.last_mesh = None  # (vertices, faces) shown
        self.message = ""  # the last action's answer (also in the panel)
        self._scene_state: dict = {}
        self._steps_rate = (time.monotonic(), None)
        self.gui: dict = {}
        self.handles: dict = {}

    # ------------------------------------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        if self.server is None:
            return ""
        host = self.cfg.host if self.cfg.host not in ("0.0.0.0", "::", "") else "localhost"
        return f"http://{host}:{self.server.get_port()}"

    def start(self) -> str:
        """Serve the viewer (``cfg.port``; 0 here = any free port, for tests) and start its threads; returns the
        URL."""
        import viser

        self.server = server = viser.ViserServer(host=self.cfg.host, port=int(self.cfg.port), label=self.label,
                                                 verbose=False)
        server.scene.set_up_direction("+z")
        server.on_client_connect(self._on_connect)
        server.on_client_disconnect(self._on_disconnect_handle)
        self._build_gui()
        try:
            self.update_scene()  # before any browser comes: its first view starts at the camera (initial camera)
        except Exception as exc:  # noqa: BLE001 - the scene thread tries again
            self.log.warning(f"viewer: first scene update failed: {exc!r}")
        self._threads = [threading.Thread(target=fn, name=f"nerf_viewer_{name}", daemon=True)
                         for name, fn in (("render", self._render_loop), ("scene", self._scene_loop))]
        for th in self._threads:
            th.start()
        return self.url

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._scene_wake.set()
        with self._cv:
            self._cv.notify_all()
        for th in self._threads:
            if th.is_alive():
                th.join(timeout=timeout)
        self._actions.shutdown(wait=False, cancel_futures=True)
        self._pictures.shutdown(wait=False, cancel_futures=True)
        if self.server is not None:
            try:
                self.server.stop()
            except Exception as exc:  # noqa: BLE001 - shutting down: report, never raise
                self.log.warning(f"viewer: stopping the server: {exc!r}")

    def stats(self) -> dict:
        """Counters (camera updates, renders by kind, dropped results, refused requests) and the last render."""
        with self._lock:
            return {**self.counts, "clients": len(self._views), "last_render": dict(self.last_render)}

    def _count(self, key: str, reason: str | None = None, warning: str | None = None) -> None:
        with self._lock:
            self.counts[key] += 1
        if reason is not None:  # a refused or dropped input: also in the mapper's input counters (~/input_stats)
            try:
                self.mapper.intake.count(reason, warning)
            except Exception:  # noqa: BLE001 - a counter never breaks the viewer
                pass

    # ------------------------------------------------------------------------------------------------ browsers
    def _on_connect(self, client) -> None:
        """viser: a browser connected (its first camera message arrived)."""
        self._scene_wake.set()
        @client.camera.on_update
        async def _(cam) -> None:  # on the event loop: cheap, never blocks (see on_camera)
            try:
                h = cam.image_height
                self.on_camera(client, pose_from_viser(cam.wxyz, cam.position), float(cam.fov),
                               cam.image_width / h if h else 4.0 / 3.0)
            except Exception as exc:  # noqa: BLE001 - a malformed camera is dropped, the browser stays
                self._count("camera_invalid", "viewer_camera_invalid", f"viewer: camera dropped: {exc}")

        try:
            cam = client.camera
            h = cam.image_height
            self.on_camera(client, pose_from_viser(cam.wxyz, cam.position), float(cam.fov),
                           cam.image_width / h if h else 4.0 / 3.0)
        except Exception as exc:  # noqa: BLE001
            self._count("camera_invalid", "viewer_camera_invalid", f"viewer: camera dropped: {exc}")

    def _on_disconnect_handle(self, client) -> None:
        self.on_disconnect(client.client_id)

    def on_camera(self, client, T_map_optical: np.ndarray, fov: float, aspect: float) -> None:
        """A browser's camera moved (or its window changed): keep only this newest camera and wake the render
        worker. Called on viser's event loop for every camera message, so it only records."""
        T = np.asarray(T_map_optical, dtype=np.float64)
        if T.shape != (4, 4) or not np.isfinite(T).all() or not (0.0 < fov < math.pi) or not (0.05 < aspect < 20):
            self._count("camera_invalid", "viewer_camera_invalid", "viewer: a non-finite camera was dropped")
            return
        now = time.monotonic()
        cid = int(client.client_id)
        with self._cv:
            if cid in self._gone:
                return
            v = self._views.get(cid)
            if v is None:
                v = self._views[cid] = ClientView(client, cid)
            if v.T is not None and v.seq != v.done_seq:
                self.counts["camera_coalesced"] += 1  # the previous camera was never rendered: replaced
            moved = v.T is None or not np.allclose(v.T, T, atol=1e-6) or abs(v.aspect - aspect) > 1e-3 \
                or abs(v.fov - fov) > 1e-4
            v.T, v.fov, v.aspect = T, float(fov), float(aspect)
            self.counts["camera_updates"] += 1
            if moved:
                v.seq += 1
                v.moved_at = now
                self._cv.notify_all()
        if self.cfg.match_fov:
            self._match_fov(v, now)

    def _match_fov(self, v: ClientView, now: float) -> None:
        want = matched_fov(camera_tan(self.mapper.intake.intrinsics, v.aspect), v.aspect)
        if abs(v.fov - want) > 1e-3 and (abs(want - v.fov_sent) > 1e-4 or now - v.fov_sent_at > 2.0):
            v.fov_sent, v.fov_sent_at = want, now
            try:
                v.client.camera.fov = want
            except Exception:  # noqa: BLE001 - a browser going away: its render is dropped anyway
                pass

    def on_disconnect(self, client_id: int) -> None:
        """A browser left: forget its camera; a render running for it is dropped when it ends."""
        with self._cv:
            self._views.pop(int(client_id), None)
            self._gone.add(int(client_id))  # viser never reuses a client id
            self._cv.notify_all()

    # ------------------------------------------------------------------------------------------------ rendering
    def _renderable(self) -> bool:
        """Whether the map is worth rendering: past its first occupancy-grid update (before it the field is fog, as
        for the periodic render) and the render layer on."""
        tr = self.mapper.trainer
        box = self.gui.get("show_render")
        return (box is None or bool(box.value)) and tr.step_count > tr.cfg.grid.update_every

    def _gap(self, duty: float) -> float:
        return self._last_dur * (1.0 / max(duty, 1e-3) - 1.0)

    def _next_job(self, now: float) -> tuple[tuple[ClientView, str] | None, float]:
        """(view, kind) to render now, or None and the seconds after which to look again (see the module
        docstring)."""
        cfg = self.cfg
        if not self._renderable():
            return None, 0.5
        tr = self.mapper.trainer
        step = int(tr.step_count)
        best, wait = None, 0.5
        with self._lock:
            views = list(self._views.values())
            last_end = self._last_end
        for v in views:
            if v.T is None:
                continue
            still_for = now - v.moved_at
            if v.done_seq < 0 and v.seq <= 2 and still_for < FIRST_DELAY_S:
                wait = min(wait, FIRST_DELAY_S - still_for)  # do not render the default camera it replaces at once
                continue
            if v.seq != v.done_seq:
                kind, duty = (COARSE if still_for < cfg.still_delay_s else REFINED), cfg.moving_duty
            elif v.done_quality == COARSE:
                if still_for < cfg.still_delay_s:
                    wait = min(wait, cfg.still_delay_s - still_for)
                    continue
                kind, duty = REFINED, cfg.moving_duty
            elif cfg.refresh_period_s > 0 and (v.done_step != step or v.done_trainer is not tr):
                due = v.done_at + cfg.refresh_period_s
                if now < due:
                    wait = min(wait, due - now)
                    continue
                kind, duty = REFRESH, cfg.idle_duty
            else:
                continue
            start = last_end + self._gap(duty)
            if now < start:
                wait = min(wait, start - now)
                continue
            if best is None or v.done_at < best[0].done_at:  # the longest waiting browser first
                best = (v, kind)
        return best, max(wait, 0.005)

    def _render_loop(self) -> None:
        """The render worker: one render at a time, of the newest camera of the browser that waited longest."""
        while not self._stop.is_set():
            try:
                job, wait = self._next_job(time.monotonic())
                if job is None:
                    with self._cv:
                        self._cv.wait(timeout=wait)
                    continue
                self.render_job(*job)
            except Exception as exc:  # noqa: BLE001 - the worker never dies; back off
                if not (self._stop.is_set() or self.mapper.stopping):
                    self._count("render_failed", "viewer_render_failed", f"viewer: render failed: {exc!r}")
                time.sleep(0.5)

    def render_size(self, kind: str, cam: tuple[float, float]) -> tuple[int, int]:
        """Render size (w, h) at the camera's aspect for a render of ``kind``: a coarse one shrunk to
        ``moving_budget_s`` by the recent cost per ray."""
        w = self.cfg.moving_width if kind == COARSE else self.cfg.still_width
        spr = self.mapper.views.render_cost.seconds_per_ray
        if kind == COARSE and spr and spr > 0:
            w = min(w, int(math.sqrt(self.cfg.moving_budget_s / spr * cam[0] / cam[1])))
        w = max(16, int(w))
        return w, max(8, int(round(w * cam[1] / cam[0])))

    def render_job(self, v: ClientView, kind: str) -> bool:
        """Render the newest camera of ``v`` (``kind``: coarse, refined or refresh) and send it; False when the
        result was dropped (the browser left, or sending failed)."""
        with self._lock:
            T, seq, fov, aspect = v.T.copy(), v.seq, v.fov, v.aspect
        tr = self.mapper.trainer
        step = int(tr.step_count)
        cam = camera_tan(self.mapper.intake.intrinsics, aspect)
        rw, rh = self.render_size(kind, cam)
        t0 = time.monotonic()
        try:
            out = self.mapper.views.render_view(T, rw, rh)
        finally:
            t1 = time.monotonic()
            with self._lock:
                self._last_end, self._last_dur = t1, t1 - t0
                v.done_seq, v.done_quality, v.done_at = seq, (COARSE if kind == COARSE else REFINED), t1
                v.done_step, v.done_trainer = step, tr
        ty = math.tan(0.5 * fov)
        img = fit_to_window(out["rgb"], cam, (ty * aspect, ty))
        with self._lock:
            alive = self._views.get(v.client_id) is v
            self.counts[f"renders_{kind}"] += 1
            self.last_render = {"kind": kind, "seconds": round(t1 - t0, 4), "size": [rw, rh],
                                "rendered_size": list(out["rendered_size"]), "window_size": [img.shape[1],
                                                                                             img.shape[0]],
                                "step": step, "at": t1}
        if not alive:
            self._count("dropped_disconnected", "viewer_render_dropped")
            return False
        try:
            v.client.scene.set_background_image(img, format="jpeg", jpeg_quality=int(self.cfg.jpeg_quality))
        except Exception:  # noqa: BLE001 - the connection closed under us: the result is dropped
            self._count("dropped_send_failed", "viewer_render_dropped")
            return False
        with self._lock:
            v.frames += 1
            v.last_image = img
            if v.first_frame_at is None:
                v.first_frame_at = time.monotonic()
            self.counts["frames_sent"] += 1
        return True

    # ------------------------------------------------------------------------------------------------ the scene
    def _scene_loop(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            self._scene_wake.wait(self.cfg.scene_period_s)
            woken = self._scene_wake.is_set()
            self._scene_wake.clear()
            with self._lock:
                idle = not self._views
            if self._stop.is_set() or (idle and not woken and time.monotonic() - last < IDLE_SCENE_PERIOD_S):
                continue  # no browser: the scene (kept by viser for the next one) is refreshed less often
            last = time.monotonic()
            try:
                self.update_scene()
            except Exception as exc:  # noqa: BLE001 - the next period tries again
                if not (self._stop.is_set() or self.mapper.stopping):
                    self._count("scene_failed", None)
                    self.log.warning(f"viewer: scene update failed: {exc!r}")

    def keyframe_poses(self) -> tuple[np.ndarray, tuple[float, float], np.ndarray | None]:
        """(refined optical poses [N,4,4] of the live keyframes, their camera's half extents, the current camera's
        optical pose or None). A map without keyframe records (a ``nerf-mapping train`` checkpoint) shows its
        training cameras."""
        from nerf_mapping.geometry import model_c2w_to_optical_pose

        m = self.mapper
        with m.lock:
            tr = m.trainer
            entries = sorted(m.keyframes.info.items())
            current = m.keyframes.current_entry()
        intr = m.intake.intrinsics
        tan = camera_tan(intr, 4.0 / 3.0) if intr else None
        if entries:
            implied = m.poses.implied_map_odom(tr, entries)
            poses = np.stack([implied[fid] @ kf.T_odom_cam for fid, kf in entries])
            if tan is None:
                try:
                    c = tr.frames.camera(entries[-1][0])
                    tan = (0.5 * float(c.width[0]) / float(c.fx[0]), 0.5 * float(c.height[0]) / float(c.fy[0]))
                except Exception:  # noqa: BLE001 - evicted meanwhile
                    pass
        else:
            extra = getattr(tr, "extra", None) or {}
            c2w = extra.get("train_c2w")
            poses = np.stack([model_c2w_to_optical_pose(np.asarray(c, dtype=np.float64)) for c in c2w]) \
                if c2w is not None and len(c2w) else np.zeros((0, 4, 4))
            if tan is None and "train_intrinsics" in extra and "train_size" in extra:
                fx, fy = (float(x) for x in extra["train_intrinsics"][0][:2])
                w, h = (float(x) for x in extra["train_size"][0])
                tan = (0.5 * w / fx, 0.5 * h / fy)
        cur = self._current_camera(tr, entries, current)
        if cur is None and len(poses):
            cur = poses[-1]
        return poses, tan or camera_tan(None, 4.0 / 3.0), cur

    def _current_camera(self, tr, entries, current) -> np.ndarray | None:
        """The camera's pose now: the newest odometry pose, with the base->camera extrinsic and the drift estimate
        (what the node publishes on /tf); without odometry (a loaded map) the keyframe the camera is at."""
        m = self.mapper
        intake = m.intake
        try:
            T_base_cam = intake.camera_extrinsic()
            if intake.latest_odom_ns and T_base_cam is not None:
                T_odom_base, _ = intake.odom.pose_at(intake.latest_odom_ns, count=False)
                if T_odom_base is not None:
                    return m.poses.drift_estimate(tr, current) @ T_odom_base @ T_base_cam
        except Exception:  # noqa: BLE001 - odometry buffer cleared meanwhile (a restart): no current camera
            pass
        if current is not None:
            fid, kf = current
            return m.poses.implied_map_odom(tr, [current])[fid] @ kf.T_odom_cam
        return None

    def update_scene(self) -> None:
        """Status, frustums, paths and the current camera (sent only when they changed)."""
        if self.server is None:
            return
        self._update_status()
        poses, tan, cur = self.keyframe_poses()
        positions = poses[:, :3, 3] if len(poses) else np.zeros((0, 3))
        span = float(np.linalg.norm(np.ptp(positions, axis=0))) if len(positions) > 1 else 1.0
        scale = float(np.clip(0.025 * span, 0.02, 10.0))  # frustum depth: ~10 cm along a 4 m path
        scene = self.server.scene
        st = self._scene_state
        if self._changed("keyframes", poses):
            self.handles["keyframes"] = scene.add_line_segments(
                "/keyframes", frustum_segments(poses, tan, scale), KEYFRAME_COLOR, thickness=1.5,
                thickness_units="screen", visible=self._shown("show_keyframes"))
        odom, refined, _ = self.mapper.pose_state()
        for name, path, color in (("path_odom", odom, ODOM_COLOR), ("path_refined", refined, REFINED_COLOR)):
            pts = np.stack([T[:3, 3] for _, T in path]) if path else np.zeros((0, 3))
            if self._changed(name, pts):
                self.handles[name] = scene.add_line_segments(
                    f"/paths/{name.removeprefix('path_')}", polyline_segments(pts, self.cfg.max_path_points), color,
                    thickness=2.5, thickness_units="screen", visible=self._shown("show_paths"))
        if cur is not None and self._changed("current", cur[None]):
            h = self.handles.get("current")
            wxyz, pos = wxyz_from_matrix(cur[:3, :3]), cur[:3, 3]
            if h is None or st.get("current_tan") != tan:
                st["current_tan"] = tan
                self.handles["current"] = scene.add_camera_frustum(
                    "/current_camera", fov=2.0 * math.atan(tan[1]), aspect=tan[0] / tan[1], scale=1.5 * scale,
                    color=CURRENT_COLOR, thickness=3.0, thickness_units="screen", wxyz=wxyz, position=pos,
                    visible=self._shown("show_current"))
            else:
                h.wxyz, h.position = wxyz, pos
            if not st.get("initial_camera_set"):
                # a new browser (and Reset View) starts a little behind and above the camera, looking where it
                # looks: the render shows what the camera sees, with the camera's frustum and path in view
                st["initial_camera_set"] = True
                fwd = cur[:3, 2]
                ic = self.server.initial_camera
                ic.position = tuple(pos - fwd * 6.0 * scale + np.array([0.0, 0.0, 4.0 * scale]))
                ic.look_at = tuple(pos + fwd * max(scale * 12.0, 0.5))
                ic.up = (0.0, 0.0, 1.0)
                ic.fov = matched_fov(tan, 16.0 / 9.0)

    def _changed(self, key: str, arr: np.ndarray) -> bool:
        old = self._scene_state.get(key)
        if old is not None and old.shape == arr.shape and np.allclose(old, arr, atol=1e-4):
            return False
        self._scene_state[key] = np.array(arr, copy=True)
        return True

    def _shown(self, key: str) -> bool:
        box = self.gui.get(key)
        return True if box is None else bool(box.value)

    def status_text(self) -> str:
        """The status panel's markdown: steps (and rate), keyframes, training PSNR, inputs and drops, the viewer's
        renders."""
        st = self.mapper.status()
        inp = self.mapper.input_stats()
        now = time.monotonic()
        t_prev, s_prev = self._steps_rate
        rate = (st["steps"] - s_prev) / (now - t_prev) if s_prev is not None and now > t_prev else None
        self._steps_rate = (now, st["steps"])
        drops = sorted(((k.removeprefix("image_"), v) for k, v in inp.items() if k.startswith("image_") and v),
                       key=lambda kv: -kv[1])[:3]
        psnr = f"{st['psnr']:.1f} dB" if st["psnr"] > 0 else "–"
        lr = self.stats()["last_render"]
        lines = [f"**steps** {st['steps']}" + (f" ({rate:.1f}/s)" if rate is not None else "")
                 + (" · training" if st["training"] else " · not training"),
                 f"**keyframes** {st['keyframes']} · **train PSNR** {psnr}",
                 f"**images** {st['images_received']} received, {st['images_dropped']} dropped"
                 + (" (" + ", ".join(f"{k} {v}" for k, v in drops) + ")" if drops else "")]
        if lr:
            lines.append(f"**render** {lr['kind']} {lr['rendered_size'][0]}x{lr['rendered_size'][1]} in "
                         f"{lr['seconds']:.2f} s")
        return "  \n".join(lines)

    def _update_status(self) -> None:
        box = self.gui.get("status")
        if box is not None:
            text = self.status_text()
            if box.content != text:
                box.content = text

    # ------------------------------------------------------------------------------------------------ the panel
    def _build_gui(self) -> None:
        gui = self.server.gui
        g = self.gui
        g["status"] = gui.add_markdown("starting ...")
        with gui.add_folder("Query"):
            g["query"] = gui.add_text("Text", "", hint=f"an open-vocabulary query (at most {self.cfg.max_query_chars} "
                                                       "characters), e.g. sofa")
            g["run_query"] = gui.add_button("Run query", hint="segment the map: the matching surface points appear "
                                                              "in relevancy colours")
        with gui.add_folder("Map"):
            off = self.output_dir is None
            g["export_mesh"] = gui.add_button("Export mesh", disabled=off,
                                              hint="ExportMesh: a mesh of the map, written to the output directory "
                                                   "and shown here")
            g["save_map"] = gui.add_button("Save map", disabled=off, hint="SaveMap: the map file, in the output "
                                                                          "directory")
        g["message"] = gui.add_markdown("")
        with gui.add_folder("Layers"):
            for key, label, value in (("show_render", "Render", True), ("show_keyframes", "Keyframes", True),
                                      ("show_paths", "Paths (odometry, refined)", True),
                                      ("show_current", "Current camera", True), ("show_mesh", "Mesh", True),
                                      ("show_query", "Query cloud", True)):
                g[key] = gui.add_checkbox(label, value)
        g["run_query"].on_click(lambda _: self.submit("query", self.run_query, g["query"].value))
        g["export_mesh"].on_click(lambda _: self.submit("export", self.export_mesh))
        g["save_map"].on_click(lambda _: self.submit("save", self.save_map))
        for key, handles in (("show_keyframes", ("keyframes",)), ("show_paths", ("path_odom", "path_refined")),
                             ("show_current", ("current",)), ("show_mesh", ("mesh",)), ("show_query", ("query",))):
            g[key].on_update(lambda _, key=key, handles=handles: self._toggle(key, handles))
        g["show_render"].on_update(lambda _: self._toggle_render())

    def _toggle(self, key: str, handles) -> None:
        for h in handles:
            if self.handles.get(h) is not None:
                self.handles[h].visible = self._shown(key)

    def _toggle_render(self) -> None:
        """Render layer off: clear every background; on: render again."""
        with self._cv:
            views = list(self._views.values())
            for v in views:
                v.done_seq = -1
            self._cv.notify_all()
        if not self._shown("show_render"):
            for v in views:
                try:
                    v.client.scene.set_background_image(None)
                except Exception:  # noqa: BLE001
                    pass

    def _say(self, text: str) -> str:
        self.message = text
        box = self.gui.get("message")
        if box is not None:
            box.content = text
        return text

    def submit(self, what: str, fn: Callable, *args) -> bool:
        """Run ``fn(*args)`` on the action thread; refused (False) while another action runs."""
        with self._lock:
            if self._busy is not None:
                busy = self._busy
            else:
                busy, self._busy = None, what
        if busy is not None:
            self._count("actions_refused_busy", None)
            self._say(f"busy: a {busy} is running; try again when it has finished")
            return False
        self._say(f"{what} ...")

        def run():
            try:
                fn(*args)
            except Exception as exc:  # noqa: BLE001 - every failure is an answer in the panel
                self._say(f"{what} failed: {exc}")
            finally:
                with self._lock:
                    self._busy = None

        try:
            self._actions.submit(run)
        except RuntimeError:  # shutting down
            with self._lock:
                self._busy = None
            return False
        return True

    # ------------------------------------------------------------------------------------------------ actions
    def run_query(self, text: Any) -> str:
        """The query box: clean the text (:func:`clean_query`), ``semantics.query`` it and show its cloud; returns
        the answer shown (a refusal names the reason)."""
        try:
            t = clean_query(text, self.cfg.max_query_chars)
        except ValueError as exc:
            self._count("queries_refused", "viewer_query_refused")
            return self._say(f"query refused: {exc}")
        try:
            seg, _ = self.mapper.semantics.query(t)
        except ValueError as exc:  # the map cannot answer (no semantics, not ready): the reason
            self._count("queries_failed", None)
            return self._say(f"query {t!r}: {exc}")
        self._show_query(seg)
        self._count("queries", None)
        return self._say(f"{seg.text!r}: {len(seg.xyz)} of {seg.n_candidates} surface points (teacher "
                         f"{seg.teacher})")

    def show_query(self, seg) -> None:
        """Show a query's points in their relevancy colours (also called with the node's QuerySegmentation
        answers); never raises (a failure is logged)."""
        try:
            self._show_query(seg)
        except Exception as exc:  # noqa: BLE001 - the caller's answer stands; the viewer only misses a picture
            self.log.warning(f"viewer: cannot show the query cloud: {exc!r}")

    def _show_query(self, seg) -> None:
        self.last_query = seg
        if self.server is None:
            return
        xyz = np.asarray(seg.xyz, dtype=np.float32).reshape(-1, 3)
        if len(xyz) == 0:
            xyz, colors = np.zeros((1, 3), np.float32), np.zeros((1, 3), np.uint8)
            size = 1e-6  # an empty answer: the node stays (with nothing visible), the previous cloud goes
        else:
            colors = np.asarray(seg.colors, dtype=np.uint8).reshape(-1, 3)
            span = float(np.linalg.norm(np.ptp(xyz, axis=0)))
            size = float(np.clip(0.002 * span, 0.002, 0.05))  # world units: ~1 cm in a 5 m room
        self.handles["query"] = self.server.scene.add_point_cloud(
            "/query", xyz, colors, point_size=size, point_shape="circle", point_shading="flat",
            visible=self._shown("show_query"))

    def export_mesh(self) -> str:
        """The Export mesh button: ``views.export_mesh`` into the output directory (the node's ExportMesh path),
        shown and handed to ``on_mesh``."""
        from nerf_mapping.export.paths import safe_output_path

        if self.output_dir is None:
            return self._say("export refused: no output directory")
        path = safe_output_path(self.output_dir, "", time.strftime("mesh_%Y%m%d_%H%M%S"), ".ply")
        r = self.mapper.views.export_mesh(path)
        self._show_mesh(r.geometry)
        if self.on_mesh is not None:
            try:
                self.on_mesh(r.geometry)
            except Exception as exc:  # noqa: BLE001 - the mesh is written and shown; the hook's failure is logged
                self.log.warning(f"viewer: mesh hook failed: {exc!r}")
        return self._say(f"mesh: {r.n_triangles} triangles -> {r.path}")

    def show_mesh(self, mesh) -> None:
        """Show an Open3D mesh (the node's ExportMesh answers), decimated to ``max_mesh_triangles``, with its vertex
        colours, on the viewer's own thread (the caller's answer does not wait for the decimation); never raises (a
        failure is logged)."""
        def run():
            try:
                self._show_mesh(mesh)
            except Exception as exc:  # noqa: BLE001 - the export stands; the viewer only misses a picture
                self.log.warning(f"viewer: cannot show the mesh: {exc!r}")

        try:
            self._pictures.submit(run)
        except RuntimeError:  # stopped
            pass

    def _show_mesh(self, mesh) -> None:
        import trimesh

        tris = np.asarray(getattr(mesh, "triangles", np.zeros((0, 3))))
        if len(tris) == 0:
            return  # a point-cloud export: nothing to show as a mesh
        cap = int(self.cfg.max_mesh_triangles)
        for _ in range(4):  # quadric decimation may stop above its target (boundaries, tiny meshes): again, lower
            n = len(np.asarray(mesh.triangles))
            if n <= cap:
                break
            mesh = mesh.simplify_quadric_decimation(max(4, int(cap * min(1.0, cap / n) * 0.9)))
        if len(np.asarray(mesh.triangles)) > cap:  # still: drop the rest (a picture, the file keeps them all)
            import copy

            mesh = copy.deepcopy(mesh)
            mesh.triangles = type(mesh.triangles)(np.asarray(mesh.triangles)[:cap])
        v, f = np.asarray(mesh.vertices), np.asarray(mesh.triangles)
        colors = (np.asarray(mesh.vertex_colors) * 255.0 + 0.5).clip(0, 255).astype(np.uint8) \
            if mesh.has_vertex_colors() else None
        self.last_mesh = (v, f)
        if self.server is None:
            return
        tm = trimesh.Trimesh(vertices=v, faces=f, vertex_colors=colors, process=False)
        self.handles["mesh"] = self.server.scene.add_mesh_trimesh("/mesh", tm, visible=self._shown("show_mesh"))

    def save_map(self) -> str:
        """The Save map button: ``mapper.save`` into the output directory (the node's SaveMap path)."""
        from nerf_mapping.export.paths import safe_output_path
        from nerf_mapping.mapping.map_io import MAP_SUFFIX

        if self.output_dir is None:
            return self._say("save refused: no output directory")
        path = safe_output_path(self.output_dir, "", time.strftime("map_%Y%m%d_%H%M%S"), MAP_SUFFIX)
        r = self.mapper.save(path, meta=self.save_meta)
        return self._say(f"saved {r['keyframes']} keyframes, step {r['steps']} -> {path}")
