"""``python -m helpers.data``: the data steps (``helpers/tools/data.py``)."""
from helpers.tools.data import main

if __name__ == "__main__":
    raise SystemExit(main())
