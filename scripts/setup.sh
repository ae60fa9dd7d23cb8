#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: system libraries, .venv with pinned dependencies, the package itself,
# the native CPU kernels and the ROS 2 interface package. Fast (seconds) when everything is already in place.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="$root/.venv"
py="${PYTHON:-python3}"

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# --- system libraries (Debian): open3d needs libusb-1.0; jemalloc speeds up torch's allocator on CPU -------------
need_apt=()
ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0' || need_apt+=(libusb-1.0-0)
ldconfig -p 2>/dev/null | grep -q 'libjemalloc.so.2' || need_apt+=(libjemalloc2)
if [ ${#need_apt[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if command -v apt-get >/dev/null 2>&1; then
    log "installing system packages: ${need_apt[*]}"
    $sudo apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null \
      || log "warning: could not install ${need_apt[*]} (open3d may fail to import)"
  else
    log "warning: apt-get not found; please install ${need_apt[*]}"
  fi
fi

# --- virtualenv + pinned dependencies ----------------------------------------------------------------------------
if [ ! -x "$venv/bin/python" ]; then
  log "creating $venv"
  "$py" -m venv "$venv"
fi
stamp="$venv/.nerf_mapping_requirements.sha"
want="$(cat requirements.txt setup.py package.xml | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing pinned dependencies (requirements.txt)"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r requirements.txt 2> >(grep -v "^WARNING: Location" >&2)
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . 2> >(grep -v "^WARNING: Location" >&2)
  echo "$want" > "$stamp"
fi

# --- native CPU kernels (C++/OpenMP torch extension, cached per environment) ---------------------------------------
"$venv/bin/python" -m nerf_mapping.native --quiet || log "warning: native kernels unavailable; the pure-PyTorch path will be used"

# --- ROS 2 interface package (colcon + rosidl from the registry's ROS 2 build wheels) -----------------------------
if [ -x scripts/build_interfaces.sh ] || [ -f scripts/build_interfaces.sh ]; then
  bash scripts/build_interfaces.sh "$venv"
fi
log "ready: $venv"
