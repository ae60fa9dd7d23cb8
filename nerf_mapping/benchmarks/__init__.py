"""Benchmarks, one module each: image quality under a time budget (:mod:`.images`: lego, DTU, fox), pose
refinement under noise (:mod:`.poses`), the online mapper's drift correction (:mod:`.drift`), kernel throughput
(:mod:`.kernels`), mesh export (:mod:`.mesh`) and open-vocabulary segmentation (:mod:`.segmentation`) on the demo
scene. Measured figures: ``docs/results/``."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_demo_scene_args(q: argparse.ArgumentParser, outputs: str) -> None:
    """Arguments shared by the benchmarks that train on a generated demo scene (``outputs``: what ``--output``
    receives): --data, --time-budget, --seed, --output, --json, --quiet, the hash-encoding impl and ``--set``."""
    from nerf_mapping.cli.common import add_config_arg, add_impl_arg

    q.add_argument("--data", type=Path, default=None,
                   help="a scene written by `scene generate` (default: the cached default demo scene)")
    q.add_argument("--time-budget", type=float, default=120.0, help="training seconds")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--output", type=Path, default=None, help=f"folder for {outputs} (default: beside --json)")
    q.add_argument("--json", type=Path, default=None)
    q.add_argument("--quiet", action="store_true")
    add_impl_arg(q)
    add_config_arg(q)


def run_and_report(run, args, keys: tuple[str, ...]) -> int:
    """``run(args)`` (library errors become one-line exits), print ``keys`` of its result, write the whole result
    to ``--json`` when given."""
    from nerf_mapping.cli.common import exit_on_error, print_and_write_json

    res = exit_on_error(run, args)
    print_and_write_json(res, args.json, {k: res[k] for k in keys})
    return 0
