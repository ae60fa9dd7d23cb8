"""Per-frame appearance embeddings (NeRF-W, Martin-Brualla et al. 2021; nerfacto's ``appearance_embedding``).

A learnable vector per training frame, fed to the field's *colour* MLP only (``FieldConfig.appearance_dim``), so a
frame's exposure, white balance or lighting can differ from the others without the geometry or the poses having to
explain it. Density never sees it. Views that are not training frames (held-out views, novel camera paths) are
rendered with the mean embedding of the training frames.

Rows start as N(0, 1) draws (as ``torch.nn.Embedding`` and nerfacto): zero rows all receive nearly the same
gradient while the field is still rough (every frame is "too dark" together), so Adam moves them in lockstep and the
colour MLP never learns to tell them apart (zero rows fit two exposures of the same views no better than no
embeddings at all: docs/results/appearance.md).

The table grows with the frame store (the online node adds keyframes while training) in chunks of ``GROW_CHUNK``
rows, so its own Adam optimizer is rebuilt (and its moments reset) once per chunk, not once per keyframe.
"""
from __future__ import annotations

import torch
from torch import nn

from nerf_mapping.extension import StepContext, TrainerExtension

GROW_CHUNK = 64


class AppearanceEmbedding(TrainerExtension):
    """The embedding table as a trainer extension: it grows with the frame store, follows the field's learning-rate
    schedule (``lr`` times the field's factor) and feeds ``appearance`` to the training render."""

    name = "appearance"

    def __init__(self, dim: int, n: int = 0, lr: float = 1e-2):
        super().__init__()
        self.dim = int(dim)
        self.lr = float(lr)
        self.table = nn.Parameter(torch.randn(self._capacity(n), self.dim))
        self.register_buffer("n_used", torch.tensor(int(n)))  # frames seen (the table has spare rows)

    @staticmethod
    def _capacity(n: int) -> int:
        return -(-max(n, 1) // GROW_CHUNK) * GROW_CHUNK

    @property
    def enabled(self) -> bool:
        return self.dim > 0

    def ensure_size(self, n: int) -> bool:
        """Hold ``n`` frames (new rows are random draws). Returns True when the parameter was replaced."""
        self.n_used.fill_(max(int(self.n_used), int(n)))
        if n <= self.table.shape[0]:
            return False
        grow = torch.randn(self._capacity(n) - self.table.shape[0], self.dim, dtype=self.table.dtype)
        self.table = nn.Parameter(torch.cat([self.table.data, grow]))
        return True

    def make_optimizer(self) -> torch.optim.Optimizer | None:
        if not self.enabled:
            return None
        return torch.optim.Adam([self.table], lr=self.lr, eps=1e-15)

    # -- trainer hooks --------------------------------------------------------------------------------------------
    def sync(self, frames, scene) -> None:
        if self.ensure_size(frames.num_ids):
            self.rebuild_optimizer()

    def before_step(self, ctx: StepContext) -> None:
        if self.optimizer is not None:
            for g in self.optimizer.param_groups:
                g["lr"] = self.lr * ctx.lr_factor

    def render_inputs(self, frame_ids: torch.Tensor) -> dict:
        return {"appearance": self(frame_ids)} if self.enabled else {}

    def eval_render_inputs(self) -> dict:
        return {"appearance": self.mean()}

    def prepare_load(self, state: dict) -> None:
        self.ensure_size(state["table"].shape[0])

    def forward(self, frame_ids: torch.Tensor) -> torch.Tensor:
        """[R] frame ids -> [R, dim] embeddings."""
        return self.table[frame_ids]

    @torch.no_grad()
    def mean(self) -> torch.Tensor | None:
        """Mean embedding of the frames seen so far ([dim]; None when embeddings are off)."""
        if not self.enabled:
            return None
        return self.table[: max(int(self.n_used), 1)].mean(0)
