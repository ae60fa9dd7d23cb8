#!/usr/bin/env bash
# Set up (idempotent) and run the default test suite (slow benchmarks are excluded; run them with -m slow).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
# The browser test's headless Chromium and its driver (Debian packages), installed only when missing; without them
# that test is skipped with the reason. Here and not in setup.sh: the demo does not need a browser.
if ! { command -v chromium >/dev/null 2>&1 && [ -x /usr/bin/chromedriver ]; }; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if command -v apt-get >/dev/null 2>&1; then
    printf '\033[1m[test]\033[0m installing chromium chromium-driver (the browser test)\n'
    { $sudo apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium \
        chromium-driver >/dev/null; } || printf '[test] warning: could not install chromium (the browser test will be skipped)\n'
  fi
fi
exec "$root/scripts/env.sh" "$root/.venv/bin/python" -m pytest -q -rs --durations=15 test "$@"
