"""The training loop: sample rays from the frame store, render, photometric loss, optimise field and poses.

The trainer accepts new frames while it runs (``frames.add`` from another thread), grows its per-frame parameters
accordingly, and adapts the number of rays per step to keep the number of samples per step constant
(as nerfacc's examples do), which keeps step time steady while the occupancy grid sharpens.

Everything trained beside the field (pose corrections, appearance embeddings, later a language field) is a
:class:`~nerf_mapping.extension.TrainerExtension` with its own optimiser, schedule and loss; ``step`` calls
their hooks in order and knows none of them by name.
"""
from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from dataclasses import field as _field
from typing import Callable

import torch

from nerf_mapping.cameras import Cameras, camera_directions, rays_from_c2w
from nerf_mapping.config import from_dict, to_dict
from nerf_mapping.fields.ngp_field import FieldConfig, NGPField
from nerf_mapping.rendering.compositing import distortion_loss, marching_coordinate
from nerf_mapping.rendering.occupancy_grid import OccupancyGrid, OccupancyGridConfig
from nerf_mapping.evaluation import psnr_from_mse
from nerf_mapping.rendering.renderer import RenderConfig, render_camera, render_rays
from nerf_mapping.fields.appearance import AppearanceEmbedding
from nerf_mapping.extension import StepContext, TrainerExtension
from nerf_mapping.training.frame_store import FrameStore
from nerf_mapping.pose.correction import PoseCorrection, PoseCorrectionConfig
from nerf_mapping.training.range import RangeConfig, RangeSupervision


@dataclass
class OptimConfig:
    lr: float = 1e-2
    """Adam learning rate of the field (hash table and MLPs)."""
    eps: float = 1e-15
    """Adam epsilon (Instant-NGP's 1e-15: hash entries see rare, tiny gradients that a larger epsilon would damp)."""
    weight_decay: float = 1e-6
    """Applied to the MLP weights only (never to the hash table)."""
    warmup_steps: int = 100
    """Linear learning-rate warm-up (steps)."""
    decay_milestones: tuple[float, ...] = (0.5, 0.75, 0.9)
    """Fractions of the run (steps or time budget) at which the lr is multiplied by ``decay_gamma``."""
    decay_gamma: float = 0.33
    """Learning-rate factor applied at each milestone."""


@dataclass
class TrainerConfig:
    """Everything the trainer needs, dumped into every checkpoint. Defaults are generic; the presets for a capture
    (object-centric, inside-out, unbounded, online) are built by :mod:`nerf_mapping.config.presets`."""

    field: FieldConfig = _field(default_factory=FieldConfig)
    """The radiance field (hash encoding, MLP sizes, appearance embeddings)."""
    grid: OccupancyGridConfig = _field(default_factory=OccupancyGridConfig)
    """The occupancy grid that skips empty space."""
    render: RenderConfig = _field(default_factory=RenderConfig)
    """Ray marching and compositing."""
    optim: OptimConfig = _field(default_factory=OptimConfig)
    """The field's optimiser and learning-rate schedule."""
    pose: PoseCorrectionConfig = _field(default_factory=PoseCorrectionConfig)
    """Joint pose refinement (off by default)."""
    range: RangeConfig = _field(default_factory=RangeConfig)
    """Range supervision and carving from depth images and LiDAR returns (where frames carry them)."""
    target_samples_per_step: int = 1 << 16
    """Rays per step are adapted so that about this many samples are rendered per step."""
    init_rays_per_step: int = 512
    """Rays of the first step (the grid is still all occupied, so each ray is expensive)."""
    max_rays_per_step: int = 1 << 14
    """Upper bound of the adapted ray count."""
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Colour composited behind the field (the datasets' background: white for NeRF-synthetic, black for DTU)."""
    distortion_loss_mult: float = 0.0
    """Weight of mip-NeRF 360's distortion loss (per ray, over the marching coordinate normalised to [0, 1] from near to
    far, :func:`nerf_mapping.rendering.compositing.marching_coordinate`; see
    :func:`nerf_mapping.rendering.compositing.distortion_loss`): pulls each ray's weight into one interval, so the
    free space of a room stays empty instead of holding a haze. 0 = off: on the demo room it did not move surfaces to
    their true depth and lowered the mesh scores (docs/results/mesh.md)."""
    mask_background: bool = False
    """Where frames carry foreground masks (DTU), train pixels outside the mask towards ``background`` (the object
    alone is mapped; a backdrop the bounded field cannot represent no longer biases geometry or poses)."""
    seed: int = 0
    """Seeds torch's generator (field initialisation) and the frame store's ray sampler."""
    threads: int | None = None
    """torch intra-op threads; None keeps torch's default (all cores)."""


@dataclass
class SceneSpec:
    """What the trainer needs to know about the scene (serialised into checkpoints)."""

    scene_box: list[list[float]]
    """[[xmin, ymin, zmin], [xmax, ymax, zmax]]: the region of interest in the world frame."""
    unbounded: bool
    """Space outside the box is contracted (mip-NeRF 360) instead of ignored."""
    near: float
    """Ray near bound (scene units)."""
    far: float
    """Ray far bound (scene units)."""
    world_scale: float = 1.0
    """Scene units per metre (datasets normalised into a unit box have their own; the online map is in metres):
    sensor noise models are in metres."""
    occupancy_box: list[list[float]] | None = None
    """Level 0 of the occupancy grid when it differs from ``scene_box`` (the online mapper's automatic extent: a
    small inner box around the first cameras, cascades growing out to and beyond the field's box); None: the
    scene box."""


class Trainer:
    def __init__(self, cfg: TrainerConfig, scene: SceneSpec, frames: FrameStore | None = None):
        self.cfg = cfg
        self.scene = scene
        torch.manual_seed(cfg.seed)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        box = torch.tensor(scene.scene_box, dtype=torch.float32)
        self.frames = frames if frames is not None else FrameStore(seed=cfg.seed)
        self.field = NGPField(cfg.field, box, scene.unbounded)
        levels = cfg.grid.levels or (4 if scene.unbounded else 1)
        grid_box = torch.tensor(scene.occupancy_box, dtype=torch.float32) if scene.occupancy_box else box
        self.grid = OccupancyGrid(cfg.grid, grid_box.reshape(6), levels)
        self.render_cfg = cfg.render.resolved(box, scene.unbounded)
        self.background = torch.tensor(cfg.background, dtype=torch.float32)
        self.pose = PoseCorrection(cfg.pose, self.frames.num_ids)
        self.appearance = AppearanceEmbedding(cfg.field.appearance_dim, self.frames.num_ids, cfg.optim.lr)
        self.range = RangeSupervision(cfg.range, 1.0 / float(scene.world_scale))
        self.range.sync(self.frames, scene)  # it sizes the step's LiDAR rays before the step's sync
        self.extensions: list[TrainerExtension] = [self.pose, self.appearance, self.range]
        self.step_count = 0
        self.n_rays = cfg.init_rays_per_step
        self.lock = threading.RLock()  # guards parameters against concurrent render calls
        self._make_optimizers()
        self.progress = 0.0
        self.last_stats: dict[str, float] = {}
        self._saved_extensions: dict[str, dict] = {}  # checkpoint entries of extensions not added yet (load)
        self._visible_marked: set[int] = set()  # frames whose view the occupancy grid has marked (grid.visibility)

    # -- optimisation ---------------------------------------------------------------------------------------------
    def _make_optimizers(self) -> None:
        oc = self.cfg.optim
        mlp = [p for n, p in self.field.named_parameters() if not n.startswith("encoding.")]
        enc = list(self.field.encoding.parameters())
        self.optimizer = torch.optim.Adam(
            [{"params": enc, "weight_decay": 0.0}, {"params": mlp, "weight_decay": oc.weight_decay}],
            lr=oc.lr, eps=oc.eps, betas=(0.9, 0.99), fused=True,
        )
        for ext in self.extensions:
            ext.rebuild_optimizer()

    def add_extension(self, ext: TrainerExtension) -> None:
        """Train ``ext`` beside the field from the next step on (its state is saved under ``ext.name``; a trainer
        loaded from a checkpoint that holds such a state restores it into ``ext`` here)."""
        if any(e.name == ext.name for e in self.extensions):
            raise ValueError(f"a trainer extension named {ext.name!r} exists already")
        with self.lock:
            self._restore_extension(ext, self._saved_extensions.pop(ext.name, {}))
            self.extensions.append(ext)

    def _restore_extension(self, ext: TrainerExtension, st: dict, with_optimizer: bool = True) -> None:
        """Load ``ext``'s state and its optimiser's from checkpoint entries ``st`` where they exist, then (re)build
        its optimiser around the loaded parameters."""
        if ext.name in st:  # e.g. checkpoints from before appearance embeddings have none
            ext.prepare_load(st[ext.name])
            ext.load_state_dict(st[ext.name])
        ext.rebuild_optimizer()
        opt = st.get(ext.name + "_optimizer")
        if with_optimizer and ext.optimizer is not None and opt:
            ext.optimizer.load_state_dict(opt)

    def _mark_visible_frames(self) -> None:
        """Frames new to the occupancy grid mark what they see (``grid.visibility``; the online mapper's automatic
        extent). Evicted frames keep what they marked: the map still holds what they saw."""
        if not self.grid.cfg.visibility:
            return
        budget = max(1, self.grid.cfg.visibility_frames_per_step)  # frames marked per step; the rest wait
        for fid in (f for f in self.frames.frame_ids() if f not in self._visible_marked):
            cam = self.frames.camera_if_live(fid)
            if cam is None:  # evicted by the keyframe thread since it was listed (a full store): nothing to mark
                continue
            # range frames see up to their returns only (with range supervision on)
            depth = self.frames.depth(fid) if self.range.enabled else None
            self.grid.mark_visible(cam, self.scene.far, None if depth is None else [depth])
            self._visible_marked.add(fid)
            budget -= 1
            if budget == 0:
                break

    def lr_factor(self) -> float:
        oc = self.cfg.optim
        warm = min(1.0, (self.step_count + 1) / max(oc.warmup_steps, 1))
        decay = oc.decay_gamma ** sum(self.progress >= m for m in oc.decay_milestones)
        return warm * decay

    def density_fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.field.infer(x)[0]

    def target_rgb(self, rgb: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """What the field is fitted to for pixels ``rgb`` [R,3] with foreground ``mask`` [R] (or None): with
        ``mask_background``, pixels outside the mask are the background colour (training and test-time pose
        optimisation share this rule)."""
        if self.cfg.mask_background and mask is not None:
            return torch.where(mask[:, None], rgb, self.background.to(rgb))
        return rgb

    def _distortion(self, out: dict, n_rays: int) -> torch.Tensor:
        """Mean distortion loss of a training render, over intervals in the marching coordinate normalised to
        [0, 1] between the scene's near and far (``distortion_loss_mult``)."""
        rc = self.render_cfg
        k0, k1 = (float(marching_coordinate(torch.tensor(v, dtype=torch.float64), rc.step_size, rc.cone_angle))
                  for v in (self.scene.near, self.scene.far))
        s0, s1 = ((marching_coordinate(out[k], rc.step_size, rc.cone_angle) - k0) / max(k1 - k0, 1e-9)
                  for k in ("t_starts", "t_ends"))
        return distortion_loss(out["weights"], s0, s1, out["ray_indices"], n_rays).mean()

    def _render_range_rays(self, cams: Cameras, rr) -> dict:
        """Render range rays without colour (``CameraRays`` in their keyframes' camera frames) at the keyframes'
        corrected poses: each ray's origin and direction move with its keyframe's pose correction."""
        c2w = cams.c2w[rr.slot]
        inputs: dict = {}
        for ext in self.extensions:
            c2w = ext.transform_c2w(c2w, rr.frame_ids)
            inputs.update(ext.render_inputs(rr.frame_ids))
        origins = torch.einsum("rij,rj->ri", c2w[:, :3, :3], rr.origins) + c2w[:, :3, 3]
        _, dirs = rays_from_c2w(c2w, rr.directions)
        return render_rays(self.field, self.grid, origins, dirs, self.scene.near, self.scene.far, self.render_cfg,
                           self.background, **inputs)

    def step(self) -> dict[str, float]:
        """One optimisation step. Returns stats (loss, psnr, n_rays, n_samples)."""
        with self.lock:
            # Sample first, then size the pose parameters: a frame added by another thread in between would
            # otherwise be sampled without a pose parameter (num_ids only grows, so this order is safe).
            n_extra = sum(e.extra_rays(self.n_rays) for e in self.extensions if e.enabled)
            batch, cams, slot = self.frames.sample(self.n_rays, n_extra)
            f = self.lr_factor()
            ctx = StepContext(step=self.step_count, progress=self.progress, lr_factor=f, field=self.field,
                              grid=self.grid, step_size=float(self.render_cfg.step_size))
            for ext in self.extensions:
                ext.sync(self.frames, self.scene)  # frames added by another thread: grow per-frame parameters
                ext.before_step(ctx)  # own lr schedule (and e.g. coarse-to-fine level weights)
            self.field.train()
            self._mark_visible_frames()
            self.grid.update_every_n_steps(self.step_count, self.density_fn, self.render_cfg.step_size)
            dirs_cam = camera_directions(cams, slot, batch.px, batch.py)
            batch.dirs_cam = dirs_cam
            c2w = cams.c2w[slot]
            inputs: dict = {}
            for ext in self.extensions:
                c2w = ext.transform_c2w(c2w, batch.frame_ids)
                inputs.update(ext.render_inputs(batch.frame_ids))
            origins, dirs = rays_from_c2w(c2w, dirs_cam)
            out = render_rays(self.field, self.grid, origins, dirs, self.scene.near, self.scene.far,
                              self.render_cfg, self.background, **inputs)
            n_samples = int(out["n_samples"])
            if batch.range_rays is not None:
                batch.range_out = self._render_range_rays(cams, batch.range_rays)
                n_samples += int(batch.range_out["n_samples"])
            target = self.target_rgb(batch.rgb, batch.mask)
            err = (out["rgb"] - target) ** 2
            loss = err.mean()
            if self.cfg.distortion_loss_mult > 0 and "weights" in out:
                loss = loss + self.cfg.distortion_loss_mult * self._distortion(out, target.shape[0])
            for ext in self.extensions:
                extra = ext.loss(batch.frame_ids, out, batch)
                if extra is not None:
                    loss = loss + extra
            for g in self.optimizer.param_groups:
                g["lr"] = self.cfg.optim.lr * f
            opts = [self.optimizer] + [e.optimizer for e in self.extensions if e.optimizer is not None]
            for o in opts:
                o.zero_grad(set_to_none=True)
            if n_samples > 0:
                loss.backward()
                for o in opts:
                    o.step()
            self.step_count += 1
            # Keep samples per step near the target: the grid gets sparser as training proceeds.
            if n_samples > 0:
                ratio = self.cfg.target_samples_per_step / n_samples
                self.n_rays = int(min(max(self.n_rays * ratio, 256), self.cfg.max_rays_per_step))
            mse = float(err.detach().mean())
            self.last_stats = {
                "loss": mse, "psnr": psnr_from_mse(mse), "n_rays": float(batch.rgb.shape[0]),
                "n_samples": float(n_samples), "n_marched": float(out.get("n_marched", n_samples)),
                "step": float(self.step_count),
                **{f"range_{k}": v for k, v in self.range.last_stats.items()},
            }
            return self.last_stats

    def train(
        self,
        max_steps: int | None = None,
        time_budget: float | None = None,
        callback: Callable[["Trainer", dict], None] | None = None,
        progress: bool = True,
        stop_event: threading.Event | None = None,
        eval_every: float | None = None,
        on_eval: Callable[["Trainer", float], None] | None = None,
        on_error: Callable[[Exception], None] | None = None,
    ) -> dict[str, float]:
        """Train until ``max_steps`` or ``time_budget`` seconds (whichever first), or until ``stop_event`` is set.

        The lr schedule follows the fraction of the run elapsed. Every ``eval_every`` training seconds
        ``on_eval(trainer, train_seconds)`` is called; its own time is not counted against the budget.
        ``callback(trainer, stats)`` runs after every step. Returns summary stats.

        Open-ended (online) runs: with neither ``max_steps`` nor ``time_budget`` the run lasts until ``stop_event``
        (required then) and the lr never decays (``progress`` is left as it is). While the frame store is empty the
        loop waits for frames (another thread adds them) and that time does not count. ``on_error(exc)``: a failed
        step is reported to it and training goes on (default: the exception propagates).
        """
        if max_steps is None and time_budget is None and stop_event is None:
            raise ValueError("give max_steps, time_budget or a stop_event")
        start_step = self.step_count
        t0 = time.perf_counter()
        rays = samples = 0
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=max_steps if max_steps is not None else int(time_budget), unit="step" if max_steps else "s",
                       dynamic_ncols=True, mininterval=1.0)
        last_shown = 0
        next_eval = eval_every if eval_every else float("inf")
        while True:
            el = time.perf_counter() - t0
            if on_eval is not None and el >= next_eval:
                t_pause = time.perf_counter()
                on_eval(self, el)
                t0 += time.perf_counter() - t_pause
                next_eval += eval_every
                continue
            done = self.step_count - start_step
            fracs = []
            if max_steps is not None:
                fracs.append(done / max_steps)
            if time_budget is not None:
                fracs.append(el / time_budget)
            if fracs:
                self.progress = max(fracs)
            if (fracs and self.progress >= 1.0) or (stop_event is not None and stop_event.is_set()):
                break
            if len(self.frames) == 0:
                if stop_event is None:
                    raise ValueError("the frame store is empty: nothing to train on")
                t_wait = time.perf_counter()
                stop_event.wait(0.05)  # frames arrive from another thread
                t0 += time.perf_counter() - t_wait
                continue
            try:
                st = self.step()
                # Python locks are not fair: without a pause the loop takes the lock again before a render waiting
                # for it (RenderView, a query) wakes up, and a chunked render could wait for a minute
                time.sleep(0.0005)
            except Exception as exc:  # noqa: BLE001 - reported to on_error when the caller asks to keep going
                if on_error is None:
                    raise
                on_error(exc)
                continue
            rays += st["n_rays"]
            samples += st["n_samples"]
            if callback is not None:
                callback(self, st)
            if bar is not None:
                el = time.perf_counter() - t0
                now = done + 1 if max_steps is not None else int(el)
                if now > last_shown:
                    bar.update(now - last_shown)
                    last_shown = now
                bar.set_postfix(loss=f"{st['loss']:.4f}", psnr=f"{st['psnr']:.2f}", rays_s=f"{rays / max(el, 1e-9):.0f}",
                                refresh=False)
        if bar is not None:
            bar.close()
        el = time.perf_counter() - t0
        return {
            "steps": self.step_count - start_step, "train_seconds": el,
            "rays_per_second": rays / max(el, 1e-9), "samples_per_second": samples / max(el, 1e-9),
        }

    # -- inference ------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def fast_inference(self):
        """Within the block, render with the native kernels when this trainer trains with the torch reference and
        they exist: both compute the same function (their agreement is tested), and a torch-reference benchmark
        measures training, not evaluation speed. Restores the training implementation afterwards."""
        from nerf_mapping import native

        enc, grid = self.field.encoding, self.grid.cfg
        saved = enc.impl, grid.impl
        if enc.impl == "torch" and native.available():
            enc.impl, grid.impl = "native", "auto"
        try:
            yield self
        finally:
            enc.impl, grid.impl = saved

    def render(self, cameras: Cameras, index: int, c2w: torch.Tensor | None = None, exclusive: bool = False,
               **kw) -> dict[str, torch.Tensor]:
        """Render a camera; extensions supply their inputs for novel views (e.g. the training frames' mean
        appearance) unless ``kw`` gives them.

        By default the trainer lock is held per chunk of rays, not for the whole image: a long render on another
        thread then interleaves with training steps instead of stopping training for seconds (chunks of one image
        may see parameters a step apart, which no picture shows). ``exclusive``: hold the lock for the whole render
        instead, so that training pauses and the render's latency is its own cost only (a render whose cost is
        bounded, like the node's RenderView: interleaved with training steps, a render answered in about
        twice its own time; docs/results/online.md)."""
        with self.lock:
            self.field.eval()
            for ext in self.extensions:
                for k, v in ext.eval_render_inputs().items():
                    kw.setdefault(k, v)
            if exclusive:
                return render_camera(self.field, self.grid, cameras, index, self.render_cfg, self.background,
                                     self.scene.near, self.scene.far, c2w=c2w, **kw)
        return render_camera(self.field, self.grid, cameras, index, self.render_cfg, self.background,
                             self.scene.near, self.scene.far, c2w=c2w, chunk_guard=self.lock, **kw)

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def state(self) -> dict:
        with self.lock:
            return {
                "format": "nerf_mapping.checkpoint.v1",
                "config": to_dict(self.cfg),
                "scene": to_dict(self.scene),
                "step": self.step_count,
                "n_rays": self.n_rays,
                "field": self.field.state_dict(),
                "grid": self.grid.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "extensions": [e.name for e in self.extensions],
                **{k: v for e in self.extensions for k, v in (
                    (e.name, e.state_dict()),
                    (e.name + "_optimizer", e.optimizer.state_dict() if e.optimizer is not None else None))},
            }

    def save(self, path, extra: dict | None = None) -> int:
        """Write a checkpoint atomically; returns the step it holds (training may go on while it is written)."""
        from pathlib import Path

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        st = self.state()
        if extra:
            st["extra"] = extra
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(st, tmp)
        tmp.replace(path)  # atomic: a crash never leaves a half-written checkpoint
        return int(st["step"])

    @classmethod
    def load(cls, path, frames: FrameStore | None = None, with_optimizer: bool = True) -> "Trainer":
        st = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(st, dict) or st.get("format") != "nerf_mapping.checkpoint.v1":
            raise ValueError(f"{path}: not a nerf_mapping checkpoint")
        cfg = from_dict(TrainerConfig, st["config"])
        scene = from_dict(SceneSpec, st["scene"])
        tr = cls(cfg, scene, frames)
        tr.field.load_state_dict(st["field"])
        tr.grid.load_state_dict(st["grid"])
        for ext in tr.extensions:
            tr._restore_extension(ext, st, with_optimizer)
        if with_optimizer:
            tr.optimizer.load_state_dict(st["optimizer"])
        known = {e.name for e in tr.extensions}
        tr._saved_extensions = {  # restored when the caller adds those extensions (Trainer.add_extension)
            n: {k: st[k] for k in ((n, n + "_optimizer") if with_optimizer else (n,)) if k in st}
            for n in st.get("extensions", []) if n not in known and n in st}
        tr.step_count = int(st["step"])
        tr.n_rays = int(st.get("n_rays", cfg.init_rays_per_step))
        tr.extra = st.get("extra", {})
        return tr
