"""``python -m nerf_mapping.scene generate --output DIR ...`` (same options as ``nerf-mapping scene generate``)."""

from __future__ import annotations

import argparse
import sys

from nerf_mapping.cli.scene import add_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nerf_mapping.scene", description="built-in demo scene")
    sub = parser.add_subparsers(dest="command", required=True)
    add_cli(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
