"""``python -m helpers.study``: run the whole study headless (``helpers/tools/study.py``)."""
from helpers.tools.study import main

if __name__ == "__main__":
    raise SystemExit(main())
