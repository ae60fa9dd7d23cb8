"""``nerf-mapping``: argument parsing only; every command calls the core library. Shared helpers for the feature
modules that register their own sub-commands are in :mod:`.common`."""

from nerf_mapping.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
