"""Throughput of the hash encoding and a full NGP-style train step: torch reference vs native kernels.

    python -m nerf_mapping.benchmarks.kernels [--n 65536] [--log2 15 17 19] [--reps 3] [--impls torch native]

Reports M points/s (min time over --reps after one warm-up) for:
  fwd      encoding forward only
  fwd+bwd  encoding forward + backward (table gradient)
  step     encoding + density MLP 32->64->64->16 + colour MLP (15 geo + 16 dir feats)->64->64->3,
           forward, backward, fused Adam on all parameters (the table included), zero_grad(set_to_none)
  adam     fused Adam step on the table alone (ms), for comparison with the encoding cost

    python -m nerf_mapping.benchmarks.kernels --field [--n 1000000]

Field inference (no autograd) of the default NGP field, M points/s: the hash grid alone, the fused native kernel
(``NGPField.infer``) for density only and for density + colour, and the unfused path (native encoding + torch MLPs).
The machine is shared: the minimum over repetitions is the most stable statistic.

    python -m nerf_mapping.benchmarks.kernels --map MAP.pt [--width 320] [--reps 2]

The inference renderer's loop driven from torch vs in one native call, on a saved map (``SaveMap`` / a snapshot of
``benchmark online``): the newest keyframe's view at ``--width``, alternating, with seconds per view, samples per ray
and the largest pixel difference between the two.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from nerf_mapping.fields.hash_encoding import HashEncoding, HashEncodingConfig


def _mlp(i: int, o: int, width: int = 64) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, o))


def _time(fn, reps: int) -> float:
    fn()  # warm-up (allocator, optimizer state, lazy build)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bench(impl: str, log2: int, n: int, reps: int) -> dict[str, float]:
    torch.manual_seed(0)
    enc = HashEncoding(HashEncodingConfig(log2_hashmap_size=log2, impl=impl))
    density = _mlp(enc.n_output_dims, 16)
    color = _mlp(15 + 16, 3)
    x = torch.rand(n, 3)
    dirs = torch.randn(n, 16)
    target = torch.rand(n, 3)
    g = torch.randn(n, enc.n_output_dims)
    res: dict[str, float] = {}
    with torch.no_grad():
        res["fwd"] = n / _time(lambda: enc(x), reps) / 1e6

    def fwd_bwd():
        enc(x).backward(g)
        enc.table.grad = None

    res["fwd+bwd"] = n / _time(fwd_bwd, reps) / 1e6
    params = list(enc.parameters()) + list(density.parameters()) + list(color.parameters())
    opt = torch.optim.Adam(params, lr=1e-2, eps=1e-15, fused=True)

    def step():
        h = density(enc(x))
        sigma = torch.nn.functional.softplus(h[:, :1])
        rgb = torch.sigmoid(color(torch.cat([h[:, 1:], dirs], dim=-1)))
        loss = ((rgb * (1 - torch.exp(-sigma)) - target) ** 2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    res["step"] = n / _time(step, reps) / 1e6
    tab_opt = torch.optim.Adam([enc.table], lr=1e-2, eps=1e-15, fused=True)
    enc.table.grad = torch.zeros_like(enc.table)
    res["adam_ms"] = _time(tab_opt.step, reps) * 1e3
    return res


def bench_field(n: int, reps: int) -> dict[str, float]:
    """M points/s of field inference paths (see the module docstring); random points in the scene box."""
    from nerf_mapping.fields.ngp_field import FieldConfig, NGPField

    torch.manual_seed(0)
    f = NGPField(FieldConfig(), torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]), False)
    x = torch.rand(n, 3) * 2 - 1
    d = torch.nn.functional.normalize(torch.randn(n, 3), dim=-1)
    res = {}
    with torch.no_grad():
        res["hash grid"] = n / _time(lambda: f.encoding((x + 1) / 2), reps) / 1e6
        if f._fused_module(None) is not None:
            res["fused density"] = n / _time(lambda: f.infer(x), reps) / 1e6
            res["fused density+colour"] = n / _time(lambda: f.infer(x, d), reps) / 1e6
        res["encoding + torch MLPs"] = n / _time(lambda: f.color(f.density(x)[1], d), reps) / 1e6
    return res


def bench_map(path: str, width: int, reps: int) -> dict[str, float]:
    """Seconds per view of the torch-driven and the native inference loop on a saved map (module docstring)."""
    from nerf_mapping.mapping.map_io import load_map

    tr, keyframes = load_map(path)
    cam = tr.frames.camera(max(keyframes))
    cam = cam.scaled(width / int(cam.width[0]))
    times: dict[str, list[float]] = {"torch": [], "auto": []}
    outs = {}
    for _ in range(reps):
        for impl in times:
            t = time.perf_counter()
            outs[impl] = tr.render(cam, 0, impl=impl)
            times[impl].append(time.perf_counter() - t)
    rays = int(cam.width[0]) * int(cam.height[0])
    return {"resolution": f"{int(cam.width[0])}x{int(cam.height[0])}", "torch loop s": min(times["torch"]),
            "native loop s": min(times["auto"]), "samples/ray": int(outs["auto"]["n_samples"]) / rays,
            "samples/ray (torch loop)": int(outs["torch"]["n_samples"]) / rays,
            "max pixel difference": float((outs["torch"]["rgb"] - outs["auto"]["rgb"]).abs().max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1 << 16, help="points per step")
    ap.add_argument("--log2", type=int, nargs="+", default=[15, 17, 19])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--impls", nargs="+", default=["torch", "native"])
    ap.add_argument("--field", action="store_true", help="field inference paths instead of the encoding")
    ap.add_argument("--map", default=None, help="a saved map: torch-driven vs native inference loop")
    ap.add_argument("--width", type=int, default=320, help="--map: width of the rendered view")
    args = ap.parse_args()
    if args.map:
        print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, map {args.map}")
        for k, v in bench_map(args.map, args.width, args.reps).items():
            print(f"{k:>26} {v}", flush=True)
        return
    if args.field:
        print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, N = {args.n} points")
        for k, v in bench_field(args.n, args.reps).items():
            print(f"{k:>24} {v:8.3f} M points/s", flush=True)
        return
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, N = {args.n} points/step")
    print(f"{'impl':>7} {'log2T':>5} {'fwd Mpt/s':>10} {'fwd+bwd':>9} {'step':>8} {'adam(table) ms':>15}")
    for log2 in args.log2:
        for impl in args.impls:
            r = bench(impl, log2, args.n, args.reps)
            print(f"{impl:>7} {log2:>5} {r['fwd']:>10.3f} {r['fwd+bwd']:>9.3f} {r['step']:>8.3f} {r['adam_ms']:>15.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
