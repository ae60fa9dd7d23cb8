"""Benchmarks, one module each: image quality under a time budget (:mod:`.images`: lego, DTU, fox), pose
refinement under noise (:mod:`.poses`), the online mapper's drift correction (:mod:`.drift`), kernel throughput
(:mod:`.kernels`). Measured figures: ``docs/results/``."""
