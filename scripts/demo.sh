#!/usr/bin/env bash
# Set up (idempotent) and run the main job on the bundled demo scene.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
exec "$root/scripts/env.sh" "$root/.venv/bin/nerf-mapping" demo "$@"
