"""``python -m helpers.resolution``: the half-resolution check (``helpers/tools/resolution.py``)."""
from helpers.tools.resolution import main

if __name__ == "__main__":
    raise SystemExit(main())
