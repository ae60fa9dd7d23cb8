#!/usr/bin/env bash
# Set up (idempotent) and run the default test suite (slow benchmarks are excluded; run them with -m slow).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
exec "$root/scripts/env.sh" "$root/.venv/bin/python" -m pytest -q -rs --durations=15 test "$@"
