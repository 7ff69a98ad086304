"""``python -m helpers.predict``: classifying image files (``helpers/tools/predict.py``)."""
from helpers.tools.predict import main

if __name__ == "__main__":
    raise SystemExit(main())
