#!/usr/bin/env bash
# Build the project's ROS 2 interface packages and install them INTO a Python
# virtualenv that holds the ROS 2 runtime wheels from PyPI (ros-kilted-*).
#
#   scripts/build_interfaces.sh VENV
#
# Builds, with colcon + ament_cmake + rosidl from the PyPI build wheels listed
# in requirements-build.txt (pip-installed into VENV first):
#   * nerf_mapping_interfaces/  (MapStatus.msg, QuerySegmentation/ExportMesh/
#                                RenderView/SaveMap/LoadMap.srv)
#   * tf2_msgs_fallback/        (package `tf2_msgs`, TFMessage only) -- only when
#                                `import tf2_msgs.msg` fails in VENV (there is no
#                                tf2_msgs wheel on PyPI), or when the tf2_msgs in
#                                VENV is this fallback (then it is kept current).
#                                On a full ROS install the real one is used.
#
# Idempotent: a stamp in VENV/share/nerf_mapping_interfaces/ holds a hash of
# the interface sources, this script, requirements-build.txt and VENV's
# pyvenv.cfg; when it matches, the script exits at once.  Set
# NERF_MAPPING_FORCE_INTERFACES=1 to rebuild anyway.
#
# How the result is found at run time with NO environment sourcing:
#   colcon runs with `--merge-install --install-base VENV`, i.e. VENV is used
#   as the install prefix exactly as the ros-kilted-* wheels use it: the
#   Python packages land in VENV/lib/python3.X/site-packages (importable as
#   usual), the C/C++ typesupport libraries in VENV/lib, the ament index and
#   .msg/.idl/.json type descriptions in VENV/share.  The wheels ship a
#   `ros_wheels_bootstrapper.pth` in site-packages that, at interpreter start,
#   re-executes Python once with LD_LIBRARY_PATH = sys.prefix/lib plus
#   site-packages/ros_*.libs (guarded by _ROS_WHEELS_BOOTSTRAP_COMPLETE).
#   That is how rclpy, rosidl_typesupport_c (which dlopen()s
#   lib<pkg>__rosidl_typesupport_fastrtps_c.so by name through
#   LD_LIBRARY_PATH) and the generated Python extensions find the libraries;
#   ours sit in the same VENV/lib, so they are found the same way.
#   AMENT_PREFIX_PATH is not needed for importing/using messages; it is only
#   set here, at build time, for ament_cmake/rosidl's ament-index look-ups.
#   colcon also drops COLCON_IGNORE, setup.sh, local_setup.sh and
#   _local_setup_util_sh.py at VENV's top level: harmless (nothing needs to be
#   sourced), and COLCON_IGNORE keeps any colcon run from crawling the venv.
#
# The build base lives OUTSIDE the repository (colcon refuses duplicate
# package names, and a build tree inside the workspace would be crawled):
#   ${NERF_MAPPING_COLCON_BASE:-${XDG_CACHE_HOME:-$HOME/.cache}/nerf_mapping/colcon_build}/<hash of VENV path>
# and --base-paths names only the interface package directories, so colcon
# never sees the repository root (itself an ament_python package) nor .venv.
#
# Needs: cmake >= 3.20, a C and C++ compiler (gcc/g++), make; Python headers
# of VENV's interpreter (pyenv / python3-dev).
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 VENV" >&2
  exit 2
fi

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$(cd "$1" && pwd -P)"
PY="$VENV/bin/python"
[[ -x "$PY" ]] || { echo "build_interfaces: $PY not found" >&2; exit 1; }

PKG_DIRS=(nerf_mapping_interfaces tf2_msgs_fallback)
STAMP_DIR="$VENV/share/nerf_mapping_interfaces"
STAMP="$STAMP_DIR/build_stamp.sha256"

# A bootstrap guard inherited from some other ROS-wheels Python process would
# stop VENV's interpreter from setting up its own LD_LIBRARY_PATH.
unset _ROS_WHEELS_BOOTSTRAP_COMPLETE

sources_hash() {
  (
    cd "$REPO"
    find "${PKG_DIRS[@]}" -type f -not -path '*/__pycache__/*' -print0 \
      | LC_ALL=C sort -z | xargs -0 sha256sum
    sha256sum scripts/build_interfaces.sh requirements-build.txt
    cat "$VENV/pyvenv.cfg" 2>/dev/null || true
  ) | sha256sum | cut -d' ' -f1
}

up_to_date() {
  [[ "${NERF_MAPPING_FORCE_INTERFACES:-0}" != 1 && -f "$STAMP" \
     && "$(cat "$STAMP")" == "$HASH" ]] || return 1
  # the installed Python package must still be there too
  local init
  for init in "$VENV"/lib/python3*/site-packages/nerf_mapping_interfaces/__init__.py; do
    [[ -f "$init" ]] && return 0
  done
  return 1
}

HASH="$(sources_hash)"
if up_to_date; then
  echo "build_interfaces: up to date ($VENV)"
  exit 0
fi

# One build per venv at a time (several set-ups may run concurrently).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$VENV/.build_interfaces.lock"
  flock 9
  if up_to_date; then
    echo "build_interfaces: up to date ($VENV)"
    exit 0
  fi
fi

for tool in cmake c++ cc make; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "build_interfaces: '$tool' not found (install cmake and a C/C++ toolchain)" >&2
    exit 1
  }
done

echo "build_interfaces: installing build requirements into $VENV"
# (pip's "Location ... is ignored" warnings about unreachable find-links
# entries of a machine-wide pip.conf are noise here: filtered out.)
{ "$PY" -m pip install -q --disable-pip-version-check --no-deps \
    -r "$REPO/requirements-build.txt" 2>&1 1>&3 \
  | { grep -v 'is ignored: it is neither a file nor a directory' >&2 || true; }
} 3>&1

BUILD_PATHS=("$REPO/nerf_mapping_interfaces")
if ! "$PY" -c 'import tf2_msgs.msg' >/dev/null 2>&1; then
  echo "build_interfaces: tf2_msgs not importable -> building tf2_msgs_fallback"
  BUILD_PATHS+=("$REPO/tf2_msgs_fallback")
elif cmp -s "$REPO/tf2_msgs_fallback/package.xml" "$VENV/share/tf2_msgs/package.xml"; then
  # The tf2_msgs in VENV is our fallback from an earlier run: keep it current.
  BUILD_PATHS+=("$REPO/tf2_msgs_fallback")
fi

VENV_KEY="$(printf '%s' "$VENV" | sha256sum | cut -c1-12)"
CACHE_BASE="${NERF_MAPPING_COLCON_BASE:-${XDG_CACHE_HOME:-$HOME/.cache}/nerf_mapping/colcon_build}"
BUILD_BASE="$CACHE_BASE/$VENV_KEY"
mkdir -p "$BUILD_BASE"
case "$BUILD_BASE/" in
  "$REPO"/*) echo "build_interfaces: build base $BUILD_BASE is inside the repo" >&2; exit 1 ;;
esac

export PATH="$VENV/bin:$PATH"
export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$VENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
export COLCON_HOME="$BUILD_BASE/colcon_home"   # no user colcon defaults/mixins
export PYTHONDONTWRITEBYTECODE=1

echo "build_interfaces: colcon build (${BUILD_PATHS[*]##*/}) -> $VENV"
cd "$BUILD_BASE"
if ! "$VENV/bin/colcon" --log-base "$BUILD_BASE/log" build \
      --merge-install \
      --install-base "$VENV" \
      --build-base "$BUILD_BASE/build" \
      --base-paths "${BUILD_PATHS[@]}" \
      --cmake-args \
        -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_TESTING=OFF \
        "-DPython3_EXECUTABLE=$PY"; then
  echo "build_interfaces: colcon build FAILED; logs under $BUILD_BASE/log/latest_build" >&2
  tail -n 60 "$BUILD_BASE"/log/latest_build/*/stdout_stderr.log >&2 || true
  exit 1
fi

# Check the result the way the node uses it: a fresh interpreter, no sourcing.
env -u AMENT_PREFIX_PATH -u CMAKE_PREFIX_PATH "$PY" -c '
from nerf_mapping_interfaces.srv import QuerySegmentation, ExportMesh, RenderView, SaveMap, LoadMap
from nerf_mapping_interfaces.msg import MapStatus
from tf2_msgs.msg import TFMessage
QuerySegmentation.Request(); MapStatus(); TFMessage()
'

mkdir -p "$STAMP_DIR"
printf '%s\n' "$HASH" > "$STAMP"
echo "build_interfaces: done ($VENV)"
