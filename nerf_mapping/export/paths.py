"""Where exports may be written: client-supplied file names (service requests, CLI arguments) resolved strictly under
a configured output directory."""
from __future__ import annotations

from pathlib import Path, PurePosixPath


def safe_output_path(output_dir: Path, filename: str, default: str, suffix: str) -> Path:
    """Resolve a client-supplied file name under ``output_dir``; ValueError for absolute paths, '..', odd names or
    anything that resolves (symlinks included) outside the directory."""
    name = (filename or "").strip() or default
    if "\x00" in name or "\\" in name:
        raise ValueError("file name contains forbidden characters")
    p = PurePosixPath(name)
    if p.is_absolute() or name.startswith("~"):
        raise ValueError("absolute paths are not allowed: give a name relative to the output directory")
    if any(part in ("..", "") for part in p.parts) or not p.parts:
        raise ValueError("'..' is not allowed in file names")
    if len(name) > 255:
        raise ValueError("file name too long")
    if suffix and p.suffix != suffix:
        p = p.with_name(p.name + suffix)
    root = Path(output_dir).resolve()
    out = (root / Path(*p.parts)).resolve()
    if out != root and root not in out.parents:
        raise ValueError("path escapes the output directory")
    return out
