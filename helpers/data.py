"""``python -m helpers.data``: the data steps.

The command line is ``helpers/tools/data.py``; this entry point imports nothing else, so
``--help`` answers at once."""

import sys

from helpers.tools.data import main

if __name__ == "__main__":
    sys.exit(main())
