"""``python -m helpers.evaluate``: scoring a model on a labelled folder.

The command line is ``helpers/tools/evaluate.py``; this entry point imports nothing else, so
``--help`` answers at once."""

import sys

from helpers.tools.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
