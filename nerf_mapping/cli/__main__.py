"""``python -m nerf_mapping.cli ...`` (same as the ``nerf-mapping`` command)."""
import sys

from nerf_mapping.cli.main import main

sys.exit(main())
