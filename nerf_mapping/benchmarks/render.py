"""``nerf-mapping benchmark render``: the inference renderer against the training-path renderer, same run.

    nerf-mapping benchmark render --data-root ../shared/data [--datasets lego,dtu,fox] [--time-budget 300]
                                  [--views 5] [--reuse] --json OUT.json

For each dataset the benchmark trains its own checkpoint first, exactly as ``benchmark lego|dtu|fox`` does (same
data settings, same config) for ``--time-budget`` seconds, saved as ``<output>/<name>/checkpoint.pt`` (``--reuse``
loads it instead when present). It then renders ``--views`` held-out views three times, interleaved: with the
previous renderer (``render_camera(reference=True)``: a density-only pruning pass then the full field on the kept
samples, native hash encoding + torch MLPs), with the inference path's torch-driven loop (``render_rays_inference``
with ``impl="torch"``: one pass, fused native field kernel, colour only where it shows), and with the inference path
as it runs by default (the same loop in one native call), and reports per path: seconds per view, rays/s, field
samples/s, PSNR (masked PSNR for DTU), and the PSNR difference. A last check renders a 200x200 view of an
*untrained* lego field (step 0, every cell occupied): seconds and extra memory, the worst case a node meets early in
a run. The machine load (1-minute load average) is recorded before and after; the renderers run in the same
process, alternating, so their ratios are fair even on a loaded machine. Measured results: docs/results/render.md.
"""
from __future__ import annotations

import os
import resource
import time
from pathlib import Path

FOLDERS = {"lego": "nerf_synthetic_lego", "dtu": "dtu_scan65_neus", "fox": "instant_ngp_fox"}


def add_cli(bs) -> None:
    from nerf_mapping.cli.common import add_config_arg, add_impl_arg

    q = bs.add_parser("render", help="inference renderer vs the training-path renderer on lego / DTU / fox: seconds "
                                     "per view, rays/s, samples/s, PSNR")
    q.add_argument("--data-root", type=Path, default=Path("../shared/data"),
                   help="folder holding nerf_synthetic_lego, dtu_scan65_neus, instant_ngp_fox")
    q.add_argument("--datasets", default="lego,dtu,fox", help="comma-separated subset of lego,dtu,fox")
    q.add_argument("--time-budget", type=float, default=300.0, help="training seconds per dataset")
    q.add_argument("--views", type=int, default=5, help="held-out views rendered per dataset and renderer")
    q.add_argument("--reuse", action="store_true", help="load <output>/<name>/checkpoint.pt when present")
    q.add_argument("--output", type=Path, default=None, help="checkpoints and renders (default: beside --json)")
    q.add_argument("--json", type=Path, default=None)
    q.add_argument("--quiet", action="store_true")
    add_impl_arg(q)
    add_config_arg(q)
    q.set_defaults(func=cmd_benchmark_render)


def _rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _trainer(name: str, args, out_dir: Path):
    from nerf_mapping.config.presets import BENCHMARK_DATA, offline_config
    from nerf_mapping.data import load_dataset
    from nerf_mapping.training.offline import build_trainer
    from nerf_mapping.training.trainer import Trainer

    d = BENCHMARK_DATA[name]
    kw = {} if d["background"] is None else {"background": d["background"]}
    path = Path(args.data_root) / FOLDERS[name]
    test = load_dataset(path, "test", d["downscale"], **kw)
    ckpt = out_dir / name / "checkpoint.pt"
    if args.reuse and ckpt.is_file():
        return Trainer.load(ckpt, with_optimizer=False), test, {"reused": str(ckpt)}
    train = load_dataset(path, "train", d["downscale"], **kw)
    cfg = offline_config(train, overrides=args.set, field_impl=args.field_impl, background=d["background"])
    trainer = build_trainer(train, cfg)
    summary = trainer.train(time_budget=args.time_budget, progress=not args.quiet)
    trainer.save(ckpt)
    return trainer, test, {"train_seconds": summary["train_seconds"], "steps": summary["steps"]}


RENDERERS = {"reference": {"reference": True}, "torch_loop": {"impl": "torch"}, "inference": {}}
"""The renderers compared, as ``Trainer.render`` options: the training path; the inference path with its marching
loop driven from torch; the inference path as it runs by default (the whole loop in one native call)."""


def _render_views(trainer, test, indices, renderer: str) -> dict:
    from nerf_mapping.evaluation import evaluate

    samples = []

    def render_fn(cameras, i):
        out = trainer.render(cameras, i, **RENDERERS[renderer])
        samples.append(int(out["n_samples"]))
        return out

    res = evaluate(render_fn, test, indices, progress=False)
    return {"psnr": res.get("psnr_masked", res["psnr"]), "seconds": [res["seconds_per_image"]] * len(indices),
            "samples": samples}


def run(args) -> dict:
    import torch

    names = [n.strip() for n in str(args.datasets).split(",") if n.strip()]
    bad = [n for n in names if n not in FOLDERS]
    if bad or not names:
        raise ValueError(f"--datasets: unknown {bad or names}; choose from {sorted(FOLDERS)}")
    for n in names:
        if not (Path(args.data_root) / FOLDERS[n]).is_dir():
            raise ValueError(f"{Path(args.data_root) / FOLDERS[n]} not found (--data-root)")
    out_dir = Path(args.output) if args.output else (Path(args.json).parent if args.json else Path("outputs/render"))
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict = {"threads": torch.get_num_threads(), "load_before": os.getloadavg()[0], "datasets": {}}
    if (Path(args.data_root) / FOLDERS["lego"]).is_dir():  # first: the process's peak memory is still low
        result["untrained"] = untrained_render(args)
    for name in names:
        trainer, test, info = _trainer(name, args, out_dir)
        step = max(1, len(test) // max(1, args.views))
        indices = list(range(0, len(test), step))[: args.views]
        w, h = int(test.cameras.width[0]), int(test.cameras.height[0])
        with trainer.fast_inference():
            trainer.render(test.cameras, indices[0])  # warm-up: allocator, lazy kernel load
            accs = {k: {"psnr": [], "seconds": [], "samples": []} for k in RENDERERS}
            for i in indices:  # alternate so that all see the same machine load
                for key, acc in accs.items():
                    r = _render_views(trainer, test, [i], key)
                    acc["psnr"].append(r["psnr"])
                    acc["seconds"] += r["seconds"]
                    acc["samples"] += r["samples"]
        row = {"resolution": [w, h], "views": indices, **info, "occupancy": trainer.grid.occupancy_fraction()}
        for key, acc in accs.items():
            sec = sum(acc["seconds"]) / len(acc["seconds"])
            row[key] = {
                "seconds_per_view": sec,
                "rays_per_second": w * h / sec,
                "samples_per_second": sum(acc["samples"]) / sum(acc["seconds"]),
                "samples_per_ray": sum(acc["samples"]) / (w * h * len(indices)),
                "psnr": sum(acc["psnr"]) / len(acc["psnr"]),
            }
        row["speedup"] = row["reference"]["seconds_per_view"] / row["inference"]["seconds_per_view"]
        row["psnr_difference_db"] = row["inference"]["psnr"] - row["reference"]["psnr"]
        row["native_loop_speedup"] = row["torch_loop"]["seconds_per_view"] / row["inference"]["seconds_per_view"]
        result["datasets"][name] = row
        print(f"{name} {w}x{h}: reference {row['reference']['seconds_per_view']:.2f} s/view "
              f"{row['reference']['psnr']:.2f} dB | torch loop {row['torch_loop']['seconds_per_view']:.2f} s/view | "
              f"inference {row['inference']['seconds_per_view']:.2f} s/view {row['inference']['psnr']:.2f} dB | "
              f"x{row['speedup']:.1f} (native loop x{row['native_loop_speedup']:.2f})", flush=True)
        del trainer
    result["load_after"] = os.getloadavg()[0]
    return result


def untrained_render(args) -> dict:
    """Seconds and extra peak memory of one 200x200 lego view rendered from an untrained field (step 0)."""
    import gc

    from nerf_mapping.config.presets import BENCHMARK_DATA, offline_config
    from nerf_mapping.data import load_dataset
    from nerf_mapping.training.offline import build_trainer

    d = BENCHMARK_DATA["lego"]
    path = Path(args.data_root) / FOLDERS["lego"]
    train = load_dataset(path, "train", d["downscale"], max_frames=4, background=d["background"])
    trainer = build_trainer(train, offline_config(train, field_impl=args.field_impl, background=d["background"]))
    gc.collect()
    before = _rss_peak_mb()
    t = time.perf_counter()
    with trainer.fast_inference():
        out = trainer.render(train.cameras, 0)
    sec = time.perf_counter() - t
    return {"seconds": sec, "extra_peak_rss_mb": _rss_peak_mb() - before, "samples": int(out["n_samples"]),
            "resolution": [int(train.cameras.width[0]), int(train.cameras.height[0])]}


def cmd_benchmark_render(args) -> int:
    from nerf_mapping.cli.common import exit_on_error, print_and_write_json

    res = exit_on_error(run, args)
    summary = {k: ({n: {"speedup": r["speedup"], "native_loop_speedup": r["native_loop_speedup"],
                        "inference_s": r["inference"]["seconds_per_view"],
                        "psnr_difference_db": r["psnr_difference_db"]} for n, r in v.items()}
                   if k == "datasets" else v) for k, v in res.items()}
    print_and_write_json(res, args.json, summary)
    return 0
