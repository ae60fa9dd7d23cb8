"""Native (C++/OpenMP) CPU kernels, JIT-built with ``torch.utils.cpp_extension.load``.

The pure-PyTorch implementations stay the reference and the fallback: :func:`load` returns ``None``
(after logging one warning) when the extension cannot be built, and every caller must then use the
torch path.

Environment variables:
    NERF_MAPPING_NATIVE=0          disable the native kernels (``load()`` returns None, no build).
    NERF_MAPPING_NATIVE_BUILD=DIR  build/cache directory (default: ``<sys.prefix>/share/nerf_mapping/native_build``
                                   if writable, else ``~/.cache/nerf_mapping/native_build``).

Build once at set-up time with ``python -m nerf_mapping.native``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import threading
from pathlib import Path
from types import ModuleType

__all__ = ["load", "available", "build_directory", "sources", "EXTENSION_NAME"]

EXTENSION_NAME = "nerf_mapping_native"
_CSRC = Path(__file__).resolve().parent / "csrc"

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_module: ModuleType | None = None
_tried = False
_error: str | None = None


def sources() -> list[str]:
    """All C++ translation units of the extension (sorted, so the build is deterministic)."""
    return sorted(str(p) for p in _CSRC.glob("*.cpp"))


def _machine_tag() -> str:
    """Short tag of torch version + CPU flags: -march=native binaries and the torch C++ ABI are both
    specific to these, so a venv moved to another host / upgraded torch gets a fresh build."""
    import torch

    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line
                    break
    except OSError:
        pass
    digest = hashlib.sha1((torch.__version__ + "|" + flags).encode()).hexdigest()[:10]
    return f"torch{torch.__version__.split('+')[0]}-{digest}"


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def build_directory() -> Path:
    """Directory the extension is (or will be) built into; created if needed."""
    env = os.environ.get("NERF_MAPPING_NATIVE_BUILD")
    if env:
        root = Path(env).expanduser()
    else:
        root = Path(sys.prefix) / "share" / "nerf_mapping" / "native_build"
        if not _writable(root):
            root = Path.home() / ".cache" / "nerf_mapping" / "native_build"
    path = root / _machine_tag()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _ensure_ninja_on_path() -> None:
    # torch's JIT build shells out to `ninja`; in a venv that is not activated the venv's bin dir
    # (where the ninja wheel puts it) is not on PATH.
    bindir = os.path.dirname(sys.executable)
    path = os.environ.get("PATH", "")
    if bindir not in path.split(os.pathsep):
        os.environ["PATH"] = bindir + (os.pathsep + path if path else "")


@contextlib.contextmanager
def _build_lock(build_dir: Path):
    """Serialise builds across processes with an OS file lock, and clear torch's stale build baton.

    torch's JIT build marks a build in progress with a plain ``<build_dir>/lock`` file and makes every other process
    wait until it disappears; a build killed half-way (Ctrl-C, SIGKILL, a test timeout) leaves it behind and every
    later process would wait forever. Our ``flock`` is released by the OS when its holder dies, so whoever holds it
    knows that no live process is building, and a ``lock`` file it finds is stale.
    """
    import fcntl

    with open(build_dir / "build.flock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            baton = build_dir / "lock"
            if baton.exists():
                _log.warning("removing a stale native build lock left by an interrupted build: %s", baton)
                baton.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load(verbose: bool = False) -> ModuleType | None:
    """Build (first use only) and import the extension; cached process-wide.

    Returns:
        the extension module, or None if disabled (NERF_MAPPING_NATIVE=0) or the build failed.
    Concurrent first use from several processes is safe: builds of one build directory are serialised with an OS
    file lock (:func:`_build_lock`, which also clears the baton of a build that was killed), the other processes
    wait, then load.
    """
    global _module, _tried, _error
    if _tried:
        return _module
    with _lock:
        if _tried:
            return _module
        if os.environ.get("NERF_MAPPING_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
            _error = "disabled by NERF_MAPPING_NATIVE=0"
            _tried = True
            return None
        try:
            import torch.utils.cpp_extension as cpp

            _ensure_ninja_on_path()
            build_dir = build_directory()
            with _build_lock(build_dir):
                _module = cpp.load(
                    name=EXTENSION_NAME,
                    sources=sources(),
                    extra_cflags=["-O3", "-march=native", "-fopenmp", "-ffp-contract=fast"],
                    extra_ldflags=["-fopenmp"],
                    build_directory=str(build_dir),
                    verbose=verbose,
                )
        except Exception as exc:  # noqa: BLE001 - any build/import failure means "use torch"
            _module = None
            _error = f"{type(exc).__name__}: {exc}".strip()
            _log.warning("nerf_mapping native kernels unavailable, falling back to PyTorch (%s)",
                         _error.splitlines()[0][:500])
        _tried = True
        return _module


def available() -> bool:
    """True if the native extension is (or can be) loaded."""
    return load() is not None


def error() -> str | None:
    """Why :func:`load` returned None (None if it did not / was not called)."""
    return _error
