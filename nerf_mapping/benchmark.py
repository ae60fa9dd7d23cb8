"""Benchmarks on the real datasets: train under a time budget, evaluate held-out views, record a PSNR-vs-time curve.

lego: 100 train views (downscale 2 -> 200x200, white background), test views r_0, r_10, ..., r_190.
dtu:  scan65 with GT cameras; every 8th view held out; masked PSNR (object mask) is the headline number.
fox:  real phone capture with OpenCV distortion, unbounded (scene contraction); every 8th view held out.
"""
from __future__ import annotations

import json
from pathlib import Path

DEFAULTS = {"lego": {"downscale": 2, "background": (1.0, 1.0, 1.0), "test_every": 10},
            "dtu": {"downscale": 1, "background": None, "test_every": 1},
            "fox": {"downscale": 4, "background": None, "test_every": 1}}


def run(name: str, args) -> dict:
    from nerf_mapping.cli import _load, configure
    from nerf_mapping.evaluation import evaluate
    from nerf_mapping.training.offline import build_trainer

    d = DEFAULTS[name]
    downscale = args.downscale or d["downscale"]
    train = _load(args.data, "train", downscale, background=d["background"])
    test = _load(args.data, "test", downscale, background=d["background"])
    if name == "lego" and len(test) != 200:
        raise SystemExit(f"error: expected the 200 lego test views, found {len(test)}")
    test_idx = list(range(0, len(test), d["test_every"]))
    cfg = configure(train, args, background=d["background"])
    trainer = build_trainer(train, cfg)
    out_dir = Path(args.output) if args.output else (
        Path(args.json).parent / f"bench_{name}_{trainer.field.encoding.impl}" if args.json else None)
    print(f"benchmark {name}: {len(train)} train / {len(test_idx)} test views at "
          f"{int(train.cameras.width[0])}x{int(train.cameras.height[0])}, impl={trainer.field.encoding.impl}")

    curve = []
    headline = "psnr_masked" if name == "dtu" else "psnr"
    quick_idx = test_idx[:: max(1, len(test_idx) // 5)][:5]

    def on_eval(tr, seconds):
        impl = tr.field.encoding.impl, tr.grid.cfg.impl
        _fast_eval(tr)
        r = evaluate(tr.render, test, quick_idx, progress=False)
        curve.append({"train_seconds": round(seconds, 1), "steps": tr.step_count, "psnr": r[headline]})
        tr.field.encoding.impl, tr.grid.cfg.impl = impl
        print(f"  t={seconds:6.1f}s step={tr.step_count:6d} psnr({len(quick_idx)} views)={r[headline]:.2f}")

    summary = trainer.train(time_budget=args.time_budget, eval_every=args.eval_every, on_eval=on_eval)
    train_impl = trainer.field.encoding.impl
    _fast_eval(trainer)
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
        "eval_impl": trainer.field.encoding.impl,
        "resolution": [int(train.cameras.width[0]), int(train.cameras.height[0])],
        "curve": curve,
        "per_image": res["per_image"],
    }
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        plot_curve(curve, out_dir / "psnr_vs_time.png", f"{name} ({out['field_impl']})")
        (out_dir / "result.json").write_text(json.dumps(out, indent=2))
        out["plot"] = str(out_dir / "psnr_vs_time.png")
    return out


def _fast_eval(trainer) -> None:
    """Render with the native kernels when they exist: the torch reference computes the same function (their
    agreement is tested), and evaluation time is not what the torch benchmark measures."""
    from nerf_mapping import native

    if trainer.field.encoding.impl == "torch" and native.available():
        trainer.field.encoding.impl = "native"
        trainer.grid.cfg.impl = "auto"


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
