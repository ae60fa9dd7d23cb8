"""``python -m nerf_mapping.native [-v]``: build the native CPU kernels now and print their status."""

from __future__ import annotations

import sys
import time


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    verbose = "-v" in argv or "--verbose" in argv
    from nerf_mapping import native

    t0 = time.perf_counter()
    mod = native.load(verbose=verbose)
    dt = time.perf_counter() - t0
    if mod is None:
        print(f"nerf_mapping native kernels: UNAVAILABLE ({native.error()}); the PyTorch fallback will be used")
        return 1
    print(f"nerf_mapping native kernels: OK ({mod.__file__}, {dt:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
