"""Tooling around the study, apart from the code the notebooks import: the headless study
runner (``study``), notebook upkeep and lint (``notebooks``) and the benchmarks (``bench``)."""
