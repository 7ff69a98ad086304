"""``python -m helpers.predict``: classifying image files.

The command line is ``helpers/tools/predict.py``; this entry point imports nothing else, so
``--help`` answers at once."""

import sys

from helpers.tools.predict import main

if __name__ == "__main__":
    sys.exit(main())
