#!/usr/bin/env bash
# Run a command with the project's run-time environment: jemalloc (faster CPU allocations for torch) when present.
set -euo pipefail
if [ -z "${NERF_MAPPING_NO_JEMALLOC:-}" ]; then
  for lib in /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 /usr/lib/aarch64-linux-gnu/libjemalloc.so.2; do
    if [ -f "$lib" ]; then export LD_PRELOAD="${LD_PRELOAD:+$LD_PRELOAD:}$lib"; break; fi
  done
fi
exec "$@"
