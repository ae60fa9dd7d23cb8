"""The main job on the bundled demo scene: generate (or reuse) the labeled scene, train a map, evaluate held-out
views against ground truth, render a fly-through video, and write everything to one folder."""
from __future__ import annotations

import json
from pathlib import Path


def run(args) -> int:
    from nerf_mapping.cli.common import load_data
    from nerf_mapping.config.presets import offline_config
    from nerf_mapping.evaluation import evaluate, to_uint8
    from nerf_mapping.export.camera_path import generate_trajectory, write_video
    from nerf_mapping.scene import ensure_default_scene
    from nerf_mapping.training.offline import checkpoint_extra

    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    scene_dir = ensure_default_scene(progress=True)
    print(f"demo scene: {scene_dir}")
    train = load_data(scene_dir, "train", 1)
    test = load_data(scene_dir, "test", 1)
    cfg = offline_config(train)
    # the simulated depth camera's images (noisy, with holes), as an RGB-D rig gives them; the ground-truth depth
    # maps beside them only score
    from nerf_mapping.benchmarks import range_frame_store
    from nerf_mapping.training.offline import scene_spec
    from nerf_mapping.training.trainer import Trainer

    trainer = Trainer(cfg, scene_spec(train), range_frame_store(train, scene_dir, "rgbd", seed=cfg.seed))
    print(f"training {args.time_budget:.0f} s on {len(train)} frames "
          f"({int(train.cameras.width[0])}x{int(train.cameras.height[0])}), hash encoding: {trainer.field.encoding.impl}")
    curve = []

    def on_eval(tr, seconds):
        r = evaluate(tr.render, test, list(range(0, len(test), max(1, len(test) // 4))), progress=False)
        curve.append({"train_seconds": round(seconds, 1), "steps": tr.step_count, "psnr": r["psnr"]})
        print(f"  t={seconds:5.1f}s  step={tr.step_count}  held-out PSNR={r['psnr']:.2f} dB")

    summary = trainer.train(time_budget=args.time_budget, eval_every=max(args.time_budget / 4, 10), on_eval=on_eval)
    ckpt = out / "checkpoint.pt"
    trainer.save(ckpt, extra=checkpoint_extra(train, scene_dir, 1))
    res = evaluate(trainer.render, test, output_dir=out / "renders")
    curve.append({"train_seconds": round(summary["train_seconds"], 1), "steps": trainer.step_count, "psnr": res["psnr"]})

    import torch

    from nerf_mapping.cameras import Cameras

    c2w = generate_trajectory("interpolate", train.cameras.c2w, args.frames)
    n = c2w.shape[0]
    cam0 = train.cameras[0:1]
    cams = Cameras(c2w=c2w, fx=cam0.fx.expand(n).clone(), fy=cam0.fy.expand(n).clone(), cx=cam0.cx.expand(n).clone(),
                   cy=cam0.cy.expand(n).clone(), width=cam0.width.expand(n).clone(), height=cam0.height.expand(n).clone(),
                   distortion=torch.zeros(n, 6), model=cam0.model.expand(n).clone())
    from tqdm import tqdm

    video = out / "flythrough.mp4"
    write_video(video, (to_uint8(trainer.render(cams, i)["rgb"]) for i in tqdm(range(n), desc="video", unit="frame")))
    metrics = {
        "scene": str(scene_dir),
        "psnr": res["psnr"], "ssim": res["ssim"], "n_test_images": res["n_images"],
        "train_seconds": summary["train_seconds"], "steps": summary["steps"],
        "rays_per_second": summary["rays_per_second"], "samples_per_second": summary["samples_per_second"],
        "field_impl": trainer.field.encoding.impl, "curve": curve,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"\nheld-out PSNR {res['psnr']:.2f} dB, SSIM {res['ssim']:.3f} on {res['n_images']} views after "
          f"{summary['train_seconds']:.0f} s of training")
    print(f"outputs in {out}: metrics.json, checkpoint.pt, renders/, flythrough.mp4")
    print(f"browse the map: nerf-mapping view --checkpoint {ckpt}")
    return 0
