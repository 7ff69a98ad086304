"""``python -m helpers.resolution``: the half-resolution check.

The command line is ``helpers/tools/resolution.py``; this entry point imports nothing else, so
``--help`` answers at once."""

import sys

from helpers.tools.resolution import main

if __name__ == "__main__":
    sys.exit(main())
