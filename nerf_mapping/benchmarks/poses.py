"""``nerf-mapping benchmark poses``: joint pose refinement under pose noise.

Synthetic noise (default, e.g. NeRF-synthetic lego):

    nerf-mapping benchmark poses --data ../shared/data/nerf_synthetic_lego --noise-sweep 1,3,5,10,15,20,30 --json OUT.json

For every rotation-noise level R (RMS degrees, see :func:`nerf_mapping.evaluation.poses.perturb_poses`; translation
noise is proportional: ``R * trans_per_deg`` scene units, default 0.5 % of the median camera distance per degree) the
training poses are perturbed (frame 0 kept exact: it anchors the map frame), one map is trained *with* pose
refinement and one *without* (``--no-baseline`` skips it), and we report the Sim(3)-aligned rotation / translation
errors of the initial and final training poses and the held-out PSNR (test poses mapped into the map's frame, then
test-time pose optimisation with the field frozen, for both runs). The breaking point is the first level whose final
median rotation error stays > 1 deg.

Real noise (DTU scan65, IDR's linear-init cameras against the GT ``cameras.npz``; translation also in mm via
``scale_mat``):

    nerf-mapping benchmark poses --data ../shared/data/dtu_scan65_neus --init linear_init --json OUT.json

On DTU the benchmark follows IDR's protocol (the object alone: pixels outside the object masks train towards the
background, and the masked PSNR is reported beside the full one) and gives every training frame an appearance
embedding (:data:`nerf_mapping.config.presets.DTU_APPEARANCE_DIM`; ``--set field.appearance_dim=0`` turns it off),
because the real images' shading changes between views and the embeddings lowered the pose errors with every seed
tried. The initial error is also reported unaligned, in the DTU world and in mm.

Each run trains 2000 steps (``--steps``) at half resolution (``--downscale 2``: lego 200x200, DTU 200x150). At
100x100 the weakly observable direction of an object-centric capture, a small orbit of the camera about the object,
moves the image by a tenth of a pixel of parallax per 0.15 deg, and the field absorbs it. The hash grid's finest level
is capped at what the images resolve (:func:`nerf_mapping.config.presets.image_limited_resolution`: one cell per pixel
footprint for the refined runs, two for the runs without refinement, 256 / 512 here). Finer levels see no more
detail; they only give the field the capacity to explain each camera's residual misalignment instead of correcting
it.

Errors are medians (and means) over the training views after a Sim(3) alignment on the camera centres, the
protocol's metric. Beside it, ``*_orientation_aligned`` reports them after
:func:`nerf_mapping.evaluation.poses.align_poses_by_orientation`, a diagnostic: the centre fit is poorly conditioned
when the cameras sit on a cap in front of the object, as on DTU.

JSON (``--json``): the headline keys of the first level at the top (``initial_`` / ``final_`` ``median`` / ``mean``
``_rotation_deg`` and ``_translation``, ``_mm`` where the scale is known, their ``_orientation_aligned`` variants,
``psnr``, ``psnr_without_refinement``, ``psnr_masked`` on DTU, ``final_median_rotation_deg_without_refinement``,
``appearance_dim``, ``seconds``); ``refined`` and ``without_refinement`` hold each run's full result, including its
initial, refined and ground-truth training poses (``poses``) for per-frame analysis. A sweep adds ``sweep`` (one such
entry per level, with ``noise_rot_deg`` and ``noise_trans``), ``breaking_point_deg`` and ``plot``
(``pose_error_vs_noise.png``); DTU adds ``initial_unaligned_*`` and ``mm_per_scene_unit``. The run settings
(``pose_opt``, ``c2f``, ``pose_precondition``, ``downscale``, ``steps_per_run``, ``tto_steps``, ...) close the file.
``--jobs N`` trains N runs at once in worker processes; finished runs are kept in ``OUT.json.partial.json`` and
``--resume`` trains only the missing ones (refused when the settings differ).

Measured results: docs/results/poses.md.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

LEGO_TEST_EVERY = 25  # 8 of the 200 lego test views


def add_cli(bs) -> None:
    from nerf_mapping.cli.common import add_config_arg, add_impl_arg

    q = bs.add_parser("poses", help="joint pose refinement: pose error and PSNR vs pose noise (lego) or real "
                                    "noisy cameras (DTU linear init)")
    q.add_argument("--data", required=True, type=Path)
    q.add_argument("--init", choices=["noise", "linear_init"], default="noise",
                   help="noise: synthetic noise on exact poses; linear_init: DTU's noisy cameras_linear_init.npz")
    q.add_argument("--noise-sweep", default=None, metavar="R1,R2,...",
                   help="rotation-noise levels in degrees (RMS); each also gets proportional translation noise")
    q.add_argument("--noise-rot-deg", type=float, default=3.0, help="single level when --noise-sweep is absent")
    q.add_argument("--trans-per-deg", type=float, default=None,
                   help="translation noise per degree of rotation noise (scene units; default 0.005 x median "
                        "camera distance)")
    q.add_argument("--pose-opt", choices=["so3xr3", "se3", "quat", "6d"], default="so3xr3")
    q.add_argument("--pose-precondition", choices=["camp", "diag", "none"], default=None,
                   help="pose preconditioning (default: the config's, camp)")
    q.add_argument("--c2f", default="0.0,0.4", metavar="START,END",
                   help="coarse-to-fine window as fractions of the run ('none' to disable)")
    q.add_argument("--downscale", type=int, default=None,
                   help="default 2: lego 200x200, DTU 200x150 (at 100x100 the residual orbit of each camera about "
                        "the object, the weakly observable direction, is a tenth of a pixel of parallax)")
    q.add_argument("--max-frames", type=int, default=None, help="subsample the training views")
    q.add_argument("--test-views", type=int, default=8, help="held-out views scored (evenly spread)")
    q.add_argument("--steps", type=int, default=2000, help="training steps per run")
    q.add_argument("--time-budget", type=float, default=None,
                   help="training seconds per run (instead of --steps; depends on the machine)")
    q.add_argument("--tto-steps", type=int, default=150, help="test-time pose optimisation steps")
    q.add_argument("--tto-rays", type=int, default=512, help="rays per held-out view per test-time step")
    q.add_argument("--no-baseline", action="store_true", help="skip the runs without refinement")
    q.add_argument("--jobs", type=int, default=1,
                   help="runs trained at once in separate processes (each gets cores/jobs torch threads unless "
                        "--set threads=N); per-run progress bars are replaced by one line per finished run")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--resume", action="store_true",
                   help="take the runs already finished from --json's OUT.json.partial.json (left by an interrupted "
                        "invocation with the same settings) and run only the missing ones")
    q.add_argument("--quiet", action="store_true", help="no per-run progress bar")
    q.add_argument("--json", type=Path, default=None)
    q.add_argument("--output", type=Path, default=None, help="folder for the error-vs-noise plot")
    add_impl_arg(q)
    add_config_arg(q)
    q.set_defaults(func=cmd_benchmark_poses)


def cmd_benchmark_poses(args) -> int:
    from nerf_mapping.cli.common import exit_on_error, print_and_write_json

    res = exit_on_error(run, args)
    print_and_write_json(res, args.json, {k: v for k, v in res.items() if k not in ("per_view",)})
    if args.json:
        Path(str(args.json) + ".partial.json").unlink(missing_ok=True)  # superseded by the complete results
    return 0


# ---------------------------------------------------------------------------------------------------------- core
def _with_c2w(data, c2w):
    cams = dataclasses.replace(data.cameras, c2w=c2w.float().clone())
    return dataclasses.replace(data, cameras=cams, metadata=dict(data.metadata))


def _subset(data, idx):
    return dataclasses.replace(
        data, cameras=data.cameras[idx] if len(idx) else data.cameras, images=[data.images[i] for i in idx],
        image_paths=[data.image_paths[i] for i in idx], frame_indices=[data.frame_indices[i] for i in idx],
        masks=[data.masks[i] for i in idx] if data.masks is not None else None,
        depths=[data.depths[i] for i in idx] if data.depths is not None else None)


def train_and_evaluate(train_noisy, gt_c2w, test, args, pose_mode: str, c2f, unit_to_mm=None, label="") -> dict:
    """Train on ``train_noisy`` (its poses are the initial estimate), score poses against ``gt_c2w`` and the held-out
    views ``test`` (SceneData in the ground-truth frame)."""
    from nerf_mapping.config.presets import offline_config, pose_benchmark_preset
    from nerf_mapping.training.offline import build_trainer
    from nerf_mapping.evaluation.poses import evaluate_heldout, pose_errors, refined_train_poses

    # the run's pose mode wins over --set pose.mode (the runs without refinement stay without)
    cfg = offline_config(train_noisy, pose_mode=pose_mode, overrides=args.set, field_impl=args.field_impl,
                         seed=args.seed,
                         preset=pose_benchmark_preset(train_noisy, c2f, getattr(args, "pose_precondition", None)))
    tr = build_trainer(train_noisy, cfg)
    t0 = time.perf_counter()
    by_time = args.time_budget is not None
    summ = tr.train(max_steps=None if by_time else args.steps, time_budget=args.time_budget if by_time else None,
                    progress=not args.quiet)  # a run is minutes long: show steps and PSNR
    tr.field.encoding.set_level_weights(None)
    init_c2w = train_noisy.cameras.c2w
    est = refined_train_poses(tr, init_c2w)
    gt, init_np, est_np = (x.double().numpy() for x in (gt_c2w, init_c2w, est))
    e0 = pose_errors(init_np, gt, unit_to_mm=unit_to_mm)
    e1 = pose_errors(est_np, gt, unit_to_mm=unit_to_mm)
    # diagnostic beside the protocol's centre fit (see evaluation.poses.align_poses_by_orientation)
    o0 = pose_errors(init_np, gt, align="orientation", unit_to_mm=unit_to_mm)
    o1 = pose_errors(est_np, gt, align="orientation", unit_to_mm=unit_to_mm)
    ev = evaluate_heldout(tr, est, gt_c2w, test.cameras, test.images, test.masks,
                          tto_steps=args.tto_steps, rays_per_view=args.tto_rays)
    out = {"initial": e0, "final": e1, "initial_orientation_aligned": o0, "final_orientation_aligned": o1,
           "psnr": ev["psnr"], "psnr_before_tto": ev["psnr_before_tto"],
           "train_psnr": tr.last_stats.get("psnr"), "appearance_dim": cfg.field.appearance_dim,
           "steps": summ["steps"], "train_seconds": summ["train_seconds"],
           "seconds": time.perf_counter() - t0,
           # the training poses themselves (c2w 3x4 rows, the file's frame), for per-frame analysis
           "poses": {"initial": init_np.tolist(), "refined": est_np.tolist(), "ground_truth": gt.tolist()}}
    if "psnr_masked" in ev:
        out["psnr_masked"] = ev["psnr_masked"]
    print(f"  [{label}] rot {e0['median_rotation_deg']:.3f} -> {e1['median_rotation_deg']:.3f} deg, "
          f"trans {e0['median_translation']:.4f} -> {e1['median_translation']:.4f}, "
          f"test PSNR {ev['psnr']:.2f} (before TTO {ev['psnr_before_tto']:.2f}), {summ['steps']} steps")
    return out


def _entry(ref: dict, base: dict | None, mm: bool) -> dict:
    e = {
        "initial_median_rotation_deg": ref["initial"]["median_rotation_deg"],
        "final_median_rotation_deg": ref["final"]["median_rotation_deg"],
        "initial_mean_rotation_deg": ref["initial"]["mean_rotation_deg"],
        "final_mean_rotation_deg": ref["final"]["mean_rotation_deg"],
        "initial_median_translation": ref["initial"]["median_translation"],
        "final_median_translation": ref["final"]["median_translation"],
        "initial_mean_translation": ref["initial"]["mean_translation"],
        "final_mean_translation": ref["final"]["mean_translation"],
        "initial_median_rotation_deg_orientation_aligned": ref["initial_orientation_aligned"]["median_rotation_deg"],
        "final_median_rotation_deg_orientation_aligned": ref["final_orientation_aligned"]["median_rotation_deg"],
        "psnr": ref["psnr"],
        "psnr_without_refinement": base["psnr"] if base else None,
        "final_median_rotation_deg_without_refinement": base["final"]["median_rotation_deg"] if base else None,
        "seconds": ref["seconds"] + (base["seconds"] if base else 0.0),
        "appearance_dim": ref.get("appearance_dim"),
        "refined": ref, "without_refinement": base,
    }
    if mm:
        for k in ("median", "mean"):
            e[f"initial_{k}_translation_mm"] = ref["initial"][f"{k}_translation_mm"]
            e[f"final_{k}_translation_mm"] = ref["final"][f"{k}_translation_mm"]
        e["final_median_translation_mm_orientation_aligned"] = ref["final_orientation_aligned"]["median_translation_mm"]
        e["psnr_masked"] = ref.get("psnr_masked")
        e["psnr_masked_without_refinement"] = base.get("psnr_masked") if base else None
    return e


def run(args) -> dict:
    from nerf_mapping.config.presets import DTU_APPEARANCE_DIM, parse_c2f
    from nerf_mapping.data import load_dataset
    from nerf_mapping.evaluation.poses import perturb_poses, pose_errors
    from nerf_mapping.geometry import to_file_frame

    t_start = time.perf_counter()
    c2f = parse_c2f(args.c2f)  # ValueError on a bad window
    ds = args.downscale or 2
    data_path = Path(args.data)
    if args.init == "linear_init":
        gt_train = load_dataset(data_path, "train", ds, max_frames=args.max_frames, cameras_file="cameras.npz")
        noisy = load_dataset(data_path, "train", ds, max_frames=args.max_frames, cameras_file="cameras_linear_init.npz")
        test = load_dataset(data_path, "test", ds, cameras_file="cameras.npz")
        if gt_train.format != "dtu":
            raise ValueError("--init linear_init needs a DTU scan with cameras_linear_init.npz")
        unit_to_mm = float(np.asarray(gt_train.metadata["dtu_scale_mat"])[0, 0])
        sel = np.unique(np.round(np.linspace(0, len(test) - 1, min(args.test_views, len(test)))).astype(int))
        test = _subset(test, sel.tolist())
        # the scene frames of the two camera files differ by a similarity: the errors below are Sim(3)-aligned;
        # the unaligned numbers (DTU world, mm) are reported too for comparison with the dataset's provenance notes
        raw = pose_errors(to_file_frame(noisy.world_transform.numpy(), noisy.cameras.c2w.numpy()),
                          to_file_frame(gt_train.world_transform.numpy(), gt_train.cameras.c2w.numpy()), align=False)
        print(f"benchmark poses (DTU linear init): {len(noisy)} train / {len(test)} test views at "
              f"{int(noisy.cameras.width[0])}x{int(noisy.cameras.height[0])}; unaligned init error "
              f"{raw['median_rotation_deg']:.3f} deg / {raw['median_translation']:.2f} mm (median)")
        tasks = [("refined", (noisy, gt_train.cameras.c2w, test, args, args.pose_opt, c2f, unit_to_mm, "refined"))]
        if not args.no_baseline:
            tasks.append(("off", (noisy, gt_train.cameras.c2w, test, args, "off", None, unit_to_mm,
                                  "no refinement")))
        done = run_tasks(tasks, args, settings=run_settings(args, data_path, c2f=c2f, downscale=ds,
                                                            appearance_preset=DTU_APPEARANCE_DIM))
        ref, base = done["refined"], done.get("off")
        out = {"dataset": "dtu_linear_init", **_entry(ref, base, mm=True),
               "initial_unaligned_median_rotation_deg": raw["median_rotation_deg"],
               "initial_unaligned_median_translation_mm": raw["median_translation"],
               "mm_per_scene_unit": unit_to_mm}
    else:
        train = load_dataset(data_path, "train", ds, max_frames=args.max_frames)
        test = load_dataset(data_path, "test", ds)
        sel = np.unique(np.round(np.linspace(0, len(test) - 1, min(args.test_views, len(test)))).astype(int))
        test = _subset(test, sel.tolist())
        gt_c2w = train.cameras.c2w.clone()
        centres = gt_c2w[:, :3, 3].double().numpy()
        med_dist = float(np.median(np.linalg.norm(centres - centres.mean(0), axis=-1)))
        tpd = args.trans_per_deg if args.trans_per_deg is not None else 0.005 * med_dist
        unit_to_mm = (float(np.asarray(train.metadata["dtu_scale_mat"])[0, 0])
                      if "dtu_scale_mat" in train.metadata else None)
        levels = ([float(x) for x in args.noise_sweep.split(",") if x.strip()] if args.noise_sweep
                  else [float(args.noise_rot_deg)])
        print(f"benchmark poses ({train.format}): {len(train)} train / {len(test)} test views at "
              f"{int(train.cameras.width[0])}x{int(train.cameras.height[0])}, levels {levels} deg, "
              f"{tpd:.4f} scene units of translation noise per degree, pose-opt {args.pose_opt}, c2f {c2f}")
        tasks = []
        for lvl in levels:
            noisy_c2w = perturb_poses(gt_c2w, lvl, lvl * tpd, seed=args.seed + int(round(lvl * 1000)))
            noisy = _with_c2w(train, noisy_c2w)
            tasks.append(((lvl, "refined"), (noisy, gt_c2w, test, args, args.pose_opt, c2f, unit_to_mm,
                                             f"{lvl:g} deg, refined")))
            if not args.no_baseline:
                tasks.append(((lvl, "off"), (noisy, gt_c2w, test, args, "off", None, unit_to_mm,
                                             f"{lvl:g} deg, no refinement")))
        done = run_tasks(tasks, args, settings=run_settings(args, data_path, c2f=c2f, downscale=ds,
                                                            trans_per_deg=tpd))
        sweep = [{"noise_rot_deg": lvl, "noise_trans": lvl * tpd,
                  **_entry(done[(lvl, "refined")], done.get((lvl, "off")), mm=unit_to_mm is not None)}
                 for lvl in levels]
        out = {"dataset": train.format, **{k: v for k, v in sweep[0].items()}}
        if args.noise_sweep:
            out["sweep"] = sweep
            out["breaking_point_deg"] = next((s["noise_rot_deg"] for s in sweep
                                              if s["final_median_rotation_deg"] > 1.0), None)
            plot_dir = Path(args.output) if args.output else (Path(args.json).parent if args.json else None)
            if plot_dir is not None:
                plot_dir.mkdir(parents=True, exist_ok=True)
                out["plot"] = str(plot_sweep(sweep, plot_dir / "pose_error_vs_noise.png"))
        out["trans_noise_per_deg"] = tpd
    from nerf_mapping.pose.correction import PoseCorrectionConfig

    out.update({"pose_opt": args.pose_opt, "c2f": list(c2f) if c2f else None,
                "pose_precondition": args.pose_precondition or PoseCorrectionConfig().precondition,
                "downscale": ds, "time_budget_per_run": args.time_budget,
                "steps_per_run": None if args.time_budget is not None else args.steps,
                "tto_steps": args.tto_steps, "seconds": time.perf_counter() - t_start})
    return out


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)  # --set threads=N still wins: the trainer applies cfg.threads after this


def _star(fn, a):
    return fn(*a)


def run_settings(args, data_path: Path, **resolved) -> dict:
    """Everything that decides what a run measures (not how many run at once, nor the noise levels: a level's runs
    are keyed by the level). ``--resume`` reuses a finished run only when these match; ``--set threads=N`` only
    changes the speed and is left out. ``resolved`` holds the values the run actually used where the arguments
    leave them open (defaults, the parsed c2f window, the translation noise derived from the data)."""
    keep = ("init", "pose_opt", "pose_precondition", "c2f", "downscale", "max_frames", "test_views", "steps",
            "time_budget", "tto_steps", "tto_rays", "seed", "field_impl")
    s = {k: getattr(args, k, None) for k in keep}
    s["data"] = str(Path(data_path).resolve())
    s["set"] = sorted(x for x in (getattr(args, "set", None) or []) if not x.replace(" ", "").startswith("threads="))
    s.update(resolved)
    return json.loads(json.dumps(s, default=str))  # as it reads back from the file


def _key_to_json(k):  # (level, mode) tuples are JSON lists; DTU's keys are plain strings
    return list(k) if isinstance(k, tuple) else k


def _key_from_json(k):
    return tuple(k) if isinstance(k, list) else k


def load_partial(path: Path, settings: dict) -> dict:
    """The finished runs ``{key: result}`` of ``path`` (a ``.partial.json``), checked against ``settings``."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"--resume: cannot read {path} ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("runs"), list) or not isinstance(doc.get("settings"), dict):
        raise ValueError(f"--resume: {path} records no settings (written by an older version?), so its runs "
                         f"cannot be checked against this invocation; remove it or run without --resume")
    diff = sorted(k for k in set(settings) | set(doc["settings"]) if settings.get(k) != doc["settings"].get(k))
    if diff:
        detail = ", ".join(f"{k}: {doc['settings'].get(k)!r} there, {settings.get(k)!r} now" for k in diff)
        raise ValueError(f"--resume: {path} was measured with other settings ({detail})")
    return {_key_from_json(r["run"]): {k: v for k, v in r.items() if k != "run"} for r in doc["runs"]}


def run_tasks(tasks: list[tuple], args, fn=None, settings: dict | None = None) -> dict:
    """Run ``fn`` (default :func:`train_and_evaluate`; a module-level function, it is pickled by name) for each
    ``(key, arguments)`` of ``tasks``, ``args.jobs`` at a time in separate processes (or in this one when jobs is 1),
    and return ``{key: result}``. Every finished run is written to ``<json>.partial.json`` at once (with
    ``settings``), so an interrupted sweep of hours keeps what it measured, and ``--resume`` runs only the missing
    ones. When a run fails no new run starts; the runs already going are finished and kept, then the first error is
    raised."""
    import os
    from concurrent.futures import CancelledError

    fn = fn or train_and_evaluate
    settings = settings or {}
    jobs = max(1, int(getattr(args, "jobs", 1) or 1))
    partial = Path(str(args.json) + ".partial.json") if args.json else None
    out: dict = {}
    if getattr(args, "resume", False):
        if partial is None:
            raise ValueError("--resume needs --json OUT.json (the finished runs are in OUT.json.partial.json)")
        if partial.is_file():
            wanted = {k for k, _ in tasks}
            out = {k: v for k, v in load_partial(partial, settings).items() if k in wanted}
            print(f"resuming: {len(out)} of {len(tasks)} runs already measured in {partial}", flush=True)
        else:
            print(f"--resume: no {partial}, running all {len(tasks)} runs", flush=True)
    todo = [(k, a) for k, a in tasks if k not in out]
    t0 = time.perf_counter()

    def finished(key, res):
        out[key] = res
        print(f"[{len(out)}/{len(tasks)} runs done, {(time.perf_counter() - t0) / 60:.1f} min] {key}", flush=True)
        if partial is not None:
            partial.parent.mkdir(parents=True, exist_ok=True)
            runs = [{"run": _key_to_json(k), **v} for k, v in out.items()]
            partial.write_text(json.dumps({"settings": settings, "runs": runs}, indent=2, default=str))

    if jobs == 1 or len(todo) <= 1:
        for key, a in todo:
            finished(key, fn(*a))
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        quiet = dict(vars(args), quiet=True)  # one progress bar per process would garble the terminal
        quiet.pop("func", None)
        qargs = type(args)(**quiet)
        workers = min(jobs, len(todo))
        threads = max(1, (os.cpu_count() or 1) // workers)
        print(f"{len(todo)} runs, {workers} at a time ({threads} torch thread(s) each)", flush=True)
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                 initargs=(threads,)) as ex:
            futs = {ex.submit(_star, fn, tuple(qargs if x is args else x for x in a)): key for key, a in todo}
            error = None
            for f in as_completed(futs):
                try:
                    finished(futs[f], f.result())
                except CancelledError:
                    continue
                except Exception as e:  # noqa: BLE001 - re-raised below, once the running runs are kept
                    if error is None:
                        error = e
                        print(f"run {futs[f]} failed ({type(e).__name__}: {e}); no new run starts, the running "
                              f"ones finish and are kept", flush=True)
                        for g in futs:
                            g.cancel()
            if error is not None:
                raise error
    return {k: out[k] for k, _ in tasks}  # in the order of the tasks


def plot_sweep(sweep: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [s["noise_rot_deg"] for s in sweep]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ax[0].plot(x, [s["initial_median_rotation_deg"] for s in sweep], "o--", label="initial")
    ax[0].plot(x, [s["final_median_rotation_deg"] for s in sweep], "o-", label="refined")
    if all(s["final_median_rotation_deg_without_refinement"] is not None for s in sweep):
        ax[0].plot(x, [s["final_median_rotation_deg_without_refinement"] for s in sweep], "x:", label="no refinement")
    ax[0].axhline(1.0, color="r", lw=0.8, label="1 deg (breaking)")
    ax[0].set_yscale("log")
    ax[0].set_xlabel("rotation noise (deg RMS)")
    ax[0].set_ylabel("median rotation error (deg, Sim(3)-aligned)")
    ax[0].legend()
    ax[0].grid(True, alpha=0.3)
    ax[1].plot(x, [s["psnr"] for s in sweep], "o-", label="refined")
    if all(s["psnr_without_refinement"] is not None for s in sweep):
        ax[1].plot(x, [s["psnr_without_refinement"] for s in sweep], "x:", label="no refinement")
    ax[1].set_xlabel("rotation noise (deg RMS)")
    ax[1].set_ylabel("held-out PSNR after test-time pose opt. (dB)")
    ax[1].legend()
    ax[1].grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
