"""`python -m ptalign_ray ...` is the same as the `ptalign` console script (used by ray job submit)."""

import sys

from ptalign_ray.cli import main

sys.exit(main())
