"""``python -m helpers.evaluate``: score a model on a labelled folder (helpers/tools)."""
from helpers.tools.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
