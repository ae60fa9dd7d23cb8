"""The language field's share of a training step, on the demo room (offline trainer, oracle ``labels`` teacher).

    python -m nerf_mapping.benchmarks.language_cost [--rays 512] [--samples-per-ray 0] [--every 1] [--warmup 60]

After ``--warmup`` steps with the field, steps run in blocks of four with and without the language field among the
trainer's extensions (the same map throughout), and the mean step time of each is printed with the samples the
last loss sent through the field. ``--samples-per-ray`` and ``--every`` set :class:`LanguageFieldConfig`'s
``samples_per_ray`` and ``every_n_steps``. Results: docs/results/segmentation.md.
"""
from __future__ import annotations

import argparse
import statistics
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rays", type=int, default=512, help="LanguageFieldConfig.rays_per_step")
    ap.add_argument("--samples-per-ray", type=int, default=0, help="LanguageFieldConfig.samples_per_ray (0: all)")
    ap.add_argument("--every", type=int, default=1, help="LanguageFieldConfig.every_n_steps")
    ap.add_argument("--warmup", type=int, default=60)
    ap.add_argument("--steps", type=int, default=80, help="timed steps (half with, half without the field)")
    args = ap.parse_args(argv)

    from nerf_mapping.cli.common import load_data
    from nerf_mapping.config.presets import offline_config
    from nerf_mapping.scene.generate import ensure_default_scene
    from nerf_mapping.semantics.field import attach_language_field
    from nerf_mapping.semantics.labels import class_names, label_images
    from nerf_mapping.semantics.teachers import TeacherConfig, make_teacher
    from nerf_mapping.training.offline import build_trainer

    data = load_data(ensure_default_scene(progress=False), "train", 1)
    teacher = make_teacher(TeacherConfig(name="labels"), class_names(data))
    cfg = offline_config(data, seed=0)
    cfg.range.enabled = False  # the scene's ground-truth depth is for scoring; the cost measured is RGB training's
    trainer = build_trainer(data, cfg)
    lf = attach_language_field(trainer, data, teacher, labels=label_images(data))
    lf.cfg.rays_per_step, lf.cfg.samples_per_ray, lf.cfg.every_n_steps = args.rays, args.samples_per_ray, args.every
    for _ in range(args.warmup):
        trainer.step()
    everything = list(trainer.extensions)
    times: dict[bool, list[float]] = {True: [], False: []}
    for i in range(args.steps):
        with_field = (i // 4) % 2 == 0  # blocks of 4: every_n_steps sees both parities
        trainer.extensions[:] = everything if with_field else [e for e in everything if e is not lf]
        t0 = time.perf_counter()
        trainer.step()
        times[with_field].append(time.perf_counter() - t0)
    trainer.extensions[:] = everything
    a, b = statistics.mean(times[True]), statistics.mean(times[False])
    print(f"rays_per_step {args.rays}, samples_per_ray {args.samples_per_ray}, every_n_steps {args.every}: step "
          f"{a * 1e3:.1f} ms with the language field, {b * 1e3:.1f} ms without (+{(a / b - 1) * 100:.1f} %); "
          f"samples in the last loss: {lf.last_samples}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
