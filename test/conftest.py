"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def shared_data_dir() -> Path:
    """The real-data folder: $NERF_MAPPING_DATA, else ../shared/data next to the repo root."""
    env = os.environ.get("NERF_MAPPING_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of the shared real datasets; skips the test cleanly when absent."""
    p = shared_data_dir()
    if not p.is_dir():
        pytest.skip(f"shared real data not found at {p} (set NERF_MAPPING_DATA)")
    return p


@pytest.fixture(scope="session")
def tiny_scene(tmp_path_factory) -> Path:
    """A small generated demo scene (nerfstudio format with depth, labels, mesh and bag), shared by a session."""
    from nerf_mapping.scene import SceneConfig, generate_scene

    out = tmp_path_factory.mktemp("tiny_scene") / "scene"
    generate_scene(SceneConfig(frames=24, width=96, height=72, seed=3), out, progress=False)
    return out
