"""The trainer's extension point: extra parameter groups trained beside the field, each with its own optimiser,
schedule and loss (per-frame pose corrections, per-frame appearance embeddings, next a language-feature field).

An extension is an ``nn.Module`` (its ``state_dict`` goes into checkpoints under its ``name``) with a few hooks that
:meth:`nerf_mapping.training.trainer.Trainer.step` calls for every extension in order, so the step itself has no
per-feature branches::

    sync(frames, scene)          new frames arrived (from another thread): grow per-frame parameters, rebuild the
                                 optimiser when a parameter was replaced
    before_step(ctx)             schedules: set the own optimiser's learning rate, anneal what it modulates
    transform_c2w(c2w, ids)      camera poses of the ray batch [R,3,4] -> [R,3,4] (pose corrections)
    render_inputs(ids)           extra keyword inputs of the training render (e.g. ``appearance`` [R,D])
    eval_render_inputs()         the same for novel / held-out views (e.g. the mean appearance)
    extra_rays(n_rays)           how many rays without colour (the frame store's range rays: LiDAR returns) the
                                 step should draw and render beside its ``n_rays`` pixels (``batch.range_rays``,
                                 rendered into ``batch.range_out``)
    loss(ids, out, batch)        an extra loss term on the render ``out`` of the ray batch ``batch`` (frame ids, pixel
                                 coordinates, colours, depths, range rays) (or None)

The defaults do nothing, so an extension overrides only what it needs. The field's own parameters stay with the
trainer; an extension must not deform geometry unless that is its purpose (a language head renders with the density
weights detached).

The base lives at the package top, below the trainer and below its implementers (``fields/appearance.py``,
``pose/correction.py``, ``semantics/field.py``), so that they import it without importing ``nerf_mapping.training``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class StepContext:
    """What an extension may read before a step."""

    step: int
    """Steps done so far."""
    progress: float
    """Fraction of the run elapsed (steps or time budget; stays 0 in an open-ended online run)."""
    lr_factor: float
    """The field's learning-rate schedule factor (warm-up x decay) at this step."""
    field: nn.Module
    """The radiance field, for extensions that modulate it (coarse-to-fine weights of the hash levels)."""
    grid: Any = None
    """The occupancy grid, for extensions that know about space before the field does (range carving)."""
    step_size: float = 0.0
    """The marching step (scene units): the finest structure the rendered weights can resolve."""


class TrainerExtension(nn.Module):
    """Base of the trainer's extensions (see the module docstring); every hook defaults to "nothing to do"."""

    name: str = ""
    """Key of the extension's state (and ``<name>_optimizer``) in checkpoints."""

    def __init__(self) -> None:
        super().__init__()
        self.optimizer: torch.optim.Optimizer | None = None

    @property
    def enabled(self) -> bool:
        return True

    def make_optimizer(self) -> torch.optim.Optimizer | None:
        return None

    def rebuild_optimizer(self) -> None:
        """A parameter was replaced (grown, reselected, loaded): a fresh optimiser, nothing stale kept."""
        self.optimizer = self.make_optimizer()

    def sync(self, frames, scene) -> None:
        pass

    def before_step(self, ctx: StepContext) -> None:
        pass

    def transform_c2w(self, c2w: torch.Tensor, frame_ids: torch.Tensor) -> torch.Tensor:
        return c2w

    def render_inputs(self, frame_ids: torch.Tensor) -> dict[str, Any]:
        return {}

    def extra_rays(self, n_rays: int) -> int:
        return 0

    def eval_render_inputs(self) -> dict[str, Any]:
        return {}

    def loss(self, frame_ids: torch.Tensor, out: dict, batch=None) -> torch.Tensor | None:
        return None

    def prepare_load(self, state: dict) -> None:
        """Size the parameters like ``state`` before ``load_state_dict`` (per-frame tables grow online)."""
