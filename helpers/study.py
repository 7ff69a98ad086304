"""``python -m helpers.study``: run the whole study headless (``helpers/tools/study.py``)."""

import sys

from helpers.tools.study import main

if __name__ == "__main__":
    sys.exit(main())
