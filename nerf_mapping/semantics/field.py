"""The language-feature field: a trainer extension that lifts a 2D teacher's per-pixel features into the map.

Its own small hash grid and MLP map a position to a unit D-dim feature (the teacher's space). Rays render it with
the radiance field's compositing weights *detached*: the language loss trains this field only and can never
deform geometry (a test checks that the density is unchanged by it). Per training step it reuses the step's samples
(``positions``, ``weights`` and ``ray_indices`` of the render), looks up the teacher's feature at each ray's pixel
in that frame's cached teacher map, and adds ``loss_mult * [(1 - cos(rendered, teacher)) + point_loss_mult *
(1 - cos(f(x_median), teacher))]`` over rays whose teacher feature is known (non-zero) and whose opacity is at least
0.5; ``x_median`` is the ray's median-weight sample, where a 3D query's candidate point lies
(:mod:`nerf_mapping.semantics.query`). Without that second term the point's own feature is never trained: early in a
run a ray's weight is a spread-out haze, so the composite can be right in 2D while the single point at the median
depth carries another feature, and a 3D query selects points cast from the wrong pixels (measured in
docs/results/segmentation.md).

Cost: D is large (384 for the sentence encoder, 512+ for CLIP), so rendering is done in the MLP's last hidden
layer: the output layer is linear, so compositing the hidden activations and projecting once per ray gives exactly
the composite of the per-sample outputs (sum_i w_i (W h_i + b) = W sum_i w_i h_i + b sum_i w_i), at 64 instead of D
values per sample. The composite is normalised per ray; a 3D point's feature is its normalised output. The loss uses
at most ``rays_per_step`` rays of a step.

Teacher maps are computed once per frame, off the training thread (``set_target``), and kept compactly: dense
``[h, w, D]`` maps, or for the oracle label teacher ``[h, w]`` class codes with one ``[C, D]`` table. They are not
saved with the map (they are recomputed from the keyframes); the field's weights are, under the extension's name,
with its config and the teacher that trained it (``teacher_meta``: name, prompt template, class names) as the
module's extra state, so :func:`restore_language_field` rebuilds it from a checkpoint alone.
"""
from __future__ import annotations

import dataclasses
import json
import threading
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from nerf_mapping.config.typed import from_dict, to_dict
from nerf_mapping.extension import TrainerExtension
from nerf_mapping.fields.contraction import to_unit_cube
from nerf_mapping.fields.hash_encoding import HashEncoding, HashEncodingConfig
from nerf_mapping.fields.ngp_field import mlp
from nerf_mapping.rendering.compositing import accumulate_along_rays, median_sample


def _encoding() -> HashEncodingConfig:
    # Semantics vary slowly compared with colour: a coarser, smaller grid than the radiance field's (12 levels up to
    # 256 cells across the box, 2^16 entries per level) trains fast and keeps the field small in maps.
    return HashEncodingConfig(n_levels=12, log2_hashmap_size=16, base_resolution=16, max_resolution=256)


@dataclass
class LanguageFieldConfig:
    encoding: HashEncodingConfig = field(default_factory=_encoding)
    """Hash grid of the language field (its own: the radiance field's geometry never sees this loss)."""
    hidden_dim: int = 64
    """Width of the MLP's hidden layers."""
    hidden_layers: int = 2
    """Hidden layers of the MLP."""
    lr: float = 1e-2
    """Adam learning rate (the field's schedule factor applies)."""
    loss_mult: float = 0.1
    """Weight of the cosine loss beside the photometric MSE."""
    min_opacity: float = 0.5
    """Rays more transparent than this carry no language loss (their depth is not settled)."""
    rays_per_step: int = 512
    """At most this many of a step's rays carry the language loss (a random subset): bounds its cost per step."""
    every_n_steps: int = 1
    """The loss runs on every n-th training step only (1: every step): the field's fixed costs per step (its hash
    grid's backward pass and Adam update over the whole table) are paid n times less often. Off by default: with
    ``samples_per_ray`` 8 it cut the field's share of a step from ~44 % to ~2 % but lowered every mIoU of
    ``benchmark segmentation`` (docs/results/segmentation.md)."""
    samples_per_ray: int = 0
    """In the loss, each ray's composite and median point are taken over its this many heaviest samples only (0 =
    all): a sample costs a hash lookup and an MLP pass forward and backward whatever its weight, and the radiance
    field's render hands over ~50 per ray. Bounds the loss's cost at ``rays_per_step x samples_per_ray`` samples.
    Off by default: 8 cut the field's share of a step from ~44 % to ~14 % and raised the 3D mIoU, but lowered the
    projected and 2D mIoU, since 2D renders composite every sample (docs/results/segmentation.md)."""
    point_loss_mult: float = 0.25
    """Weight of the loss on the feature at each ray's median sample, relative to the composite's. A larger weight
    makes the 3D points right but loses small objects in 2D; the default balances the two (the weights compared on
    ``benchmark segmentation``: docs/results/segmentation.md)."""


class TeacherMap(NamedTuple):
    """A frame's teacher features: ``dense`` [h,w,D], or ``codes`` [h,w] into ``table`` [C,D]; ``size`` (W, H) of
    the frame they describe."""

    dense: torch.Tensor | None
    codes: torch.Tensor | None
    table: torch.Tensor | None
    size: tuple[int, int]

    def lookup(self, px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
        """[R,D] features at frame pixel coordinates (nearest cell)."""
        h, w = (self.dense.shape[:2] if self.dense is not None else self.codes.shape)
        u = (px * (w / self.size[0])).long().clamp(0, w - 1)
        v = (py * (h / self.size[1])).long().clamp(0, h - 1)
        if self.dense is not None:
            return self.dense[v, u].float()
        return self.table[self.codes[v, u].long()]


class LanguageField(TrainerExtension):
    name = "language"

    def __init__(self, cfg: LanguageFieldConfig, dim: int, scene_box, unbounded: bool, teacher: str = "",
                 teacher_meta: dict | None = None):
        super().__init__()
        self.cfg = cfg
        self.dim = int(dim)
        self.teacher = teacher
        """Name of the teacher whose space the features live in (queries must use the same one)."""
        self.teacher_meta = {str(k): str(v) for k, v in (teacher_meta or {}).items()}
        """How the teacher was set up (``prompt_template``, ``class_names`` as JSON): saved with the weights."""
        self.register_buffer("scene_box", torch.as_tensor(scene_box, dtype=torch.float32).reshape(2, 3).clone())
        self.unbounded = bool(unbounded)
        self.encoding = HashEncoding(cfg.encoding)
        self.mlp = mlp(self.encoding.n_output_dims, cfg.hidden_dim, cfg.hidden_layers, self.dim)
        self.targets: dict[int, TeacherMap] = {}
        self._targets_lock = threading.Lock()
        self.last_loss = float("nan")
        self.last_samples = 0
        """Samples that went through the field in its last render (for the loss: its cost, one hash lookup and MLP
        pass each, forward and backward)."""
        self._step = 0
        self.rebuild_optimizer()

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.cfg.lr, eps=1e-15)

    # -- checkpoints: the config and teacher travel with the weights (plain str/number types: weights_only loads)
    def get_extra_state(self) -> dict:
        return {"config": json.dumps(to_dict(self.cfg)), "dim": self.dim, "teacher": self.teacher,
                "unbounded": self.unbounded, **{"teacher." + k: v for k, v in self.teacher_meta.items()}}

    def set_extra_state(self, state) -> None:
        if isinstance(state, dict):
            self.teacher = str(state.get("teacher", self.teacher))
            self.teacher_meta = {k[8:]: str(v) for k, v in state.items() if str(k).startswith("teacher.")}

    def frozen_copy(self) -> "LanguageField":
        """A copy of the weights for readers on other threads (queries): eval mode, no gradients, no teacher maps
        (see :func:`nerf_mapping.semantics.query.language_snapshot` on taking it while training runs)."""
        c = LanguageField(self.cfg, self.dim, self.scene_box, self.unbounded, self.teacher, self.teacher_meta)
        c.load_state_dict(self.state_dict())
        c.optimizer = None
        c.eval()
        for p in c.parameters():
            p.requires_grad_(False)
        return c

    # -- teacher maps --------------------------------------------------------------------------------------------
    def set_target(self, frame_id: int, target: TeacherMap) -> None:
        with self._targets_lock:
            self.targets[int(frame_id)] = target

    def drop_target(self, frame_id: int) -> None:
        with self._targets_lock:
            self.targets.pop(int(frame_id), None)

    # -- the field ---------------------------------------------------------------------------------------------
    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """[N,3] world points -> [N,H] activations before the (linear) output layer."""
        u = to_unit_cube(x.detach(), self.scene_box, self.unbounded).clamp(0.0, 1.0)
        return self.mlp[:-1](self.encoding(u))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N,3] world points -> [N,D] unit features."""
        return nn.functional.normalize(self.mlp[-1](self.hidden(x)), dim=-1)

    def render(self, out: dict, n_rays: int, rays: torch.Tensor | None = None,
               with_points: bool = False, max_samples: int = 0):
        """[n_rays, D] features composited with the render's (detached) weights, unit where the ray hit something;
        ``rays``: only these ray indices of the render ([len(rays), D] then). ``with_points``: also each ray's
        feature at its median sample (where the 3D query's candidate point lies), zero for rays without samples.
        ``rays`` must be ascending: renumbered in that order, the samples stay sorted by ray (packed layout).
        ``max_samples`` > 0: each ray keeps only its this many heaviest samples (the training loss's saving)."""
        m = n_rays if rays is None else len(rays)
        if "positions" not in out:
            z = torch.zeros(m, self.dim)
            return (z, z.clone()) if with_points else z
        w, ri, pos = out["weights"].detach(), out["ray_indices"], out["positions"]
        if rays is not None:  # keep the samples of the chosen rays, renumbered 0..len(rays)-1
            remap = torch.full((n_rays,), -1, dtype=torch.long)
            remap[rays] = torch.arange(len(rays))
            keep = remap[ri] >= 0
            w, ri, pos = w[keep], remap[ri[keep]], pos[keep]
        if max_samples > 0 and w.numel() > max_samples:
            keep = heaviest_per_ray(w, ri, m, max_samples)
            w, ri, pos = w[keep], ri[keep], pos[keep]
        self.last_samples = int(pos.shape[0])
        hid = self.hidden(pos)
        h = accumulate_along_rays(w, ri, m, hid)
        opacity = accumulate_along_rays(w, ri, m)
        last = self.mlp[-1]
        feats = nn.functional.normalize(h @ last.weight.T + opacity * last.bias, dim=-1)
        if not with_points:
            return feats
        idx = median_sample(w, ri, m, opacity[:, 0])
        hit = idx < w.numel()
        point = torch.zeros(m, self.dim)
        if bool(hit.any()):
            point[hit] = nn.functional.normalize(last(hid[idx[hit]]), dim=-1)
        return feats, point

    # -- training ------------------------------------------------------------------------------------------------
    def before_step(self, ctx) -> None:
        self._step = int(ctx.step)
        for g in self.optimizer.param_groups:
            g["lr"] = self.cfg.lr * ctx.lr_factor

    def loss(self, frame_ids: torch.Tensor, out: dict, batch=None) -> torch.Tensor | None:
        if batch is None or "positions" not in out or not self.targets:
            return None
        if self.cfg.every_n_steps > 1 and self._step % self.cfg.every_n_steps:
            return None  # not this step's turn (every_n_steps): no loss, no gradient, the optimiser skips the field
        with self._targets_lock:
            targets = dict(self.targets)
        n = frame_ids.shape[0]
        target = torch.zeros(n, self.dim)
        have = torch.zeros(n, dtype=torch.bool)
        for fid in frame_ids.unique().tolist():
            tm = targets.get(int(fid))
            if tm is None:
                continue
            sel = torch.nonzero(frame_ids == fid).squeeze(1)
            target[sel] = tm.lookup(batch.px[sel], batch.py[sel])
            have[sel] = True
        valid = have & (torch.linalg.vector_norm(target, dim=-1) > 0) & (out["opacity"].detach() >= self.cfg.min_opacity)
        rays = torch.nonzero(valid).squeeze(1)
        if rays.numel() == 0:
            return None
        if rays.numel() > self.cfg.rays_per_step:
            rays = rays[torch.randperm(rays.numel())[:self.cfg.rays_per_step]].sort().values  # ascending: see render
        pred, point = self.render(out, n, rays, with_points=True, max_samples=self.cfg.samples_per_ray)
        t = nn.functional.normalize(target[rays], dim=-1)
        # the composite (what 2D views show) and the feature at the median sample (where a 3D query's candidate point
        # lies): early in a run the weight along a ray is a spread-out haze, and training only the composite leaves
        # the single point at the median depth with a different feature than the ray's average
        loss = (1.0 - (pred * t).sum(-1)).mean() + self.cfg.point_loss_mult * (1.0 - (point * t).sum(-1)).mean()
        self.last_loss = float(loss.detach())
        return self.cfg.loss_mult * loss


def heaviest_per_ray(weights: torch.Tensor, ray_indices: torch.Tensor, n_rays: int, k: int) -> torch.Tensor:
    """[S] bool: the ``k`` largest-weight samples of each ray in a packed layout (``ray_indices`` ascending), in
    their original order."""
    # sort by (ray, -weight): weights are in [0, 1], so ray + (1 - w) / 2 orders rays first, heavier samples first
    key = ray_indices.double() + (1.0 - weights.double().clamp(0.0, 1.0)) * 0.5
    order = torch.argsort(key)
    counts = torch.bincount(ray_indices, minlength=n_rays)
    start = torch.cumsum(counts, 0) - counts  # first slot of each ray in the sorted order (rays stay contiguous)
    rank = torch.arange(order.numel()) - start[ray_indices[order]]
    keep = torch.zeros(weights.numel(), dtype=torch.bool)
    keep[order[rank < k]] = True
    return keep


def teacher_map(teacher, image, labels=None) -> TeacherMap:
    """A frame's teacher features, compactly: class codes + the teacher's table for the oracle label teacher
    (which has a ``table`` and ``codes``), the dense map otherwise. ``image`` uint8 [H,W,3] (numpy or torch)."""
    import numpy as np

    img = np.asarray(image)
    size = (int(img.shape[1]), int(img.shape[0]))
    table = getattr(teacher, "table", None)
    if table is not None:
        return TeacherMap(None, teacher.codes(labels).to(torch.int16), table, size)
    return TeacherMap(teacher.image_features(img).to(torch.float16), None, None, size)


def teacher_meta(teacher) -> dict[str, str]:
    """What a query needs to rebuild ``teacher``'s text encoder, and the classes of the oracle teacher."""
    meta = {}
    if getattr(teacher, "template", None):
        meta["prompt_template"] = teacher.template
    if getattr(teacher, "class_names", None):
        meta["class_names"] = json.dumps({str(k): v for k, v in teacher.class_names.items()})
    return meta


def find_language_field(trainer) -> "LanguageField | None":
    """The language field among ``trainer``'s extensions (None when it has none)."""
    return next((e for e in list(trainer.extensions) if isinstance(e, LanguageField)), None)


def saved_language_field(trainer) -> dict | None:
    """The extra state (teacher name, dim, config, teacher meta) of the language field saved in the checkpoint
    ``trainer`` was loaded from, or None when it has none."""
    saved = getattr(trainer, "_saved_extensions", {}).get(LanguageField.name, {}).get(LanguageField.name)
    return None if saved is None else dict(saved.get("_extra_state", {}))


def restore_language_field(trainer) -> LanguageField | None:
    """Rebuild the language field of a loaded checkpoint (weights, config, teacher meta) and add it to
    ``trainer``; None when the checkpoint has none. Its teacher maps are empty until set again."""
    extra = saved_language_field(trainer)
    if extra is None:
        return None
    cfg = from_dict(LanguageFieldConfig, json.loads(extra["config"]))
    ext = LanguageField(cfg, int(extra["dim"]), trainer.field.scene_box.detach(), bool(extra.get("unbounded")),
                        str(extra.get("teacher", "")))
    trainer.add_extension(ext)  # loads the weights and the extra state (teacher meta)
    return ext


def new_language_field(trainer, teacher, cfg: LanguageFieldConfig | None = None) -> LanguageField:
    """A language field for ``teacher`` over ``trainer``'s scene box, added to the trainer; when the trainer was
    loaded from a checkpoint holding one, that one (ValueError if another teacher trained it)."""
    extra = saved_language_field(trainer)
    if extra is not None:
        if extra.get("teacher") != teacher.name or int(extra.get("dim", -1)) != teacher.dim:
            raise ValueError(f"the map's language field was trained with the {extra.get('teacher')!r} teacher "
                             f"({extra.get('dim')}-D), not {teacher.name!r} ({teacher.dim}-D)")
        return restore_language_field(trainer)
    ext = LanguageField(cfg or scaled_config(trainer.scene), teacher.dim, trainer.field.scene_box.detach(),
                        trainer.scene.unbounded, teacher.name, teacher_meta(teacher))
    trainer.add_extension(ext)
    return ext


def scaled_config(scene) -> LanguageFieldConfig:
    """The default config for ``scene``: the grid's resolutions are relative to the box, so with an automatic extent
    (a field box 2^k times the inner box, contracted beyond: twice the span) they are scaled by the ratio of the
    field box to the inner box, which keeps the default's cell size across the region the cameras see."""
    cfg = LanguageFieldConfig()
    occ = scene.occupancy_box
    if occ:
        box, inner = np.asarray(scene.scene_box, float), np.asarray(occ, float)
        k = float((box[1] - box[0]).max() / (inner[1] - inner[0]).max())
        e = cfg.encoding
        cfg.encoding = dataclasses.replace(e, base_resolution=max(1, round(e.base_resolution * k)),
                                           max_resolution=max(1, round(e.max_resolution * k)))
    return cfg


def attach_language_field(trainer, data, teacher, cfg: LanguageFieldConfig | None = None,
                          labels: list | None = None) -> LanguageField:
    """Offline: add a language field to ``trainer`` (built from ``data`` by :func:`training.offline.build_trainer`,
    so frame ids are 0..N-1 in ``data``'s order) with every frame's teacher map; ``labels``: the frames' label
    images when the caller has read them already (the labels teacher needs them)."""
    from nerf_mapping.semantics.labels import label_images

    ext = new_language_field(trainer, teacher, cfg)
    if labels is None:
        labels = label_images(data) if teacher.needs_labels else [None] * len(data)
    for i in range(len(data)):
        ext.set_target(i, teacher_map(teacher, data.images[i], labels[i]))
    return ext
