"""Benchmarks on the real datasets: train under a time budget, evaluate held-out views, record a PSNR-vs-time curve.

lego: 100 train views (downscale 2 -> 200x200, white background), test views r_0, r_10, ..., r_190.
dtu:  scan65 with GT cameras; every 8th view held out; masked PSNR (object mask) is the headline number.
fox:  real phone capture with OpenCV distortion, unbounded (scene contraction); every 8th view held out.
"""
from __future__ import annotations

import json
from pathlib import Path



def run(name: str, args) -> dict:
    """Train on ``args.data`` for ``args.time_budget`` seconds and evaluate the held-out views (``args``: the
    ``benchmark lego|dtu|fox`` options). Raises ValueError / DataError on bad input."""
    from nerf_mapping.config.presets import BENCHMARK_DATA, offline_config
    from nerf_mapping.data import load_dataset
    from nerf_mapping.evaluation import evaluate
    from nerf_mapping.training.offline import build_trainer

    d = BENCHMARK_DATA[name]
    downscale = args.downscale or d["downscale"]
    kw = {} if d["background"] is None else {"background": d["background"]}
    train = load_dataset(args.data, "train", downscale, **kw)
    test = load_dataset(args.data, "test", downscale, **kw)
    if name == "lego" and len(test) != 200:
        raise ValueError(f"expected the 200 lego test views, found {len(test)}")
    test_idx = list(range(0, len(test), d["test_every"]))
    cfg = offline_config(train, overrides=args.set, field_impl=args.field_impl, background=d["background"])
    trainer = build_trainer(train, cfg)
    out_dir = Path(args.output) if args.output else (
        Path(args.json).parent / f"bench_{name}_{trainer.field.encoding.impl}" if args.json else None)
    print(f"benchmark {name}: {len(train)} train / {len(test_idx)} test views at "
          f"{int(train.cameras.width[0])}x{int(train.cameras.height[0])}, impl={trainer.field.encoding.impl}")

    curve = []
    headline = "psnr_masked" if name == "dtu" else "psnr"
    quick_idx = test_idx[:: max(1, len(test_idx) // 5)][:5]

    def on_eval(tr, seconds):
        with tr.fast_inference():
            r = evaluate(tr.render, test, quick_idx, progress=False)
        curve.append({"train_seconds": round(seconds, 1), "steps": tr.step_count, "psnr": r[headline]})
        print(f"  t={seconds:6.1f}s step={tr.step_count:6d} psnr({len(quick_idx)} views)={r[headline]:.2f}")

    summary = trainer.train(time_budget=args.time_budget, eval_every=args.eval_every, on_eval=on_eval)
    train_impl = trainer.field.encoding.impl
    with trainer.fast_inference():
        eval_impl = trainer.field.encoding.impl
        res = evaluate(trainer.render, test, test_idx, output_dir=out_dir / "renders" if out_dir else None)
    curve.append({"train_seconds": round(summary["train_seconds"], 1), "steps": trainer.step_count,
                  "psnr": res[headline], "n_views": len(test_idx)})
    out = {
        "dataset": name,
        "psnr": res[headline],
        "psnr_full_image": res["psnr"],
        "ssim": res["ssim"],
        "n_test_images": res["n_images"],
        "seconds_per_image": res["seconds_per_image"],
        "train_seconds": summary["train_seconds"],
        "steps": summary["steps"],
        "rays_per_second": summary["rays_per_second"],
        "samples_per_second": summary["samples_per_second"],
        "field_impl": train_impl,
        "eval_impl": eval_impl,
        "resolution": [int(train.cameras.width[0]), int(train.cameras.height[0])],
        "curve": curve,
        "seconds_to_psnr": seconds_to_psnr(curve, (25.0, 28.0, 30.0)),
        "per_image": res["per_image"],
    }
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        plot_curve(curve, out_dir / "psnr_vs_time.png", f"{name} ({out['field_impl']})")
        (out_dir / "result.json").write_text(json.dumps(out, indent=2))
        out["plot"] = str(out_dir / "psnr_vs_time.png")
    return out


def seconds_to_psnr(curve: list[dict], bars) -> dict[str, float | None]:
    """Training seconds of the first curve point at or above each PSNR bar (None: never reached). The curve is
    sampled every ``--eval-every`` seconds, so each figure is an upper bound within that interval."""
    out: dict[str, float | None] = {}
    for bar in bars:
        hit = [c["train_seconds"] for c in curve if c["psnr"] >= bar]
        out[f"{bar:g}"] = min(hit) if hit else None
    return out


def plot_curve(curve: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([c["train_seconds"] for c in curve], [c["psnr"] for c in curve], "o-")
    ax.set_xlabel("training time (s, 2 CPU cores)")
    ax.set_ylabel("test PSNR (dB)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
