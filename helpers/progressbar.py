"""Progress bars that suit where the code runs.

In Colab and Jupyter (with ipywidgets) a widget; in a terminal a bar redrawn in place; in a
notebook executed headless (``helpers.study`` sets ``HEADLESS_VARIABLE`` for its kernels), or a
kernel that cannot show widgets, nothing while it runs and one final line, so that a saved
notebook reads as a report rather than a hundred redrawn bars.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

HEADLESS_VARIABLE = "BLOOD_CELLS_HEADLESS"

Item = TypeVar("Item")


def display_kind() -> str:
    """"widget", "terminal" or "final line": how progress is shown here."""
    if os.environ.get(HEADLESS_VARIABLE):
        return "final line"
    try:
        from IPython import get_ipython
    except ImportError:
        return "terminal"
    shell = get_ipython()
    if shell is None or type(shell).__name__ == "TerminalInteractiveShell":
        return "terminal"
    # A kernel (Jupyter, Colab, papermill, nbval): widgets need ipywidgets and a frontend.
    return "widget" if importlib.util.find_spec("ipywidgets") else "final line"


class Progress:
    """Counts work done of ``total``; shows it as ``display_kind`` says. Use as a context
    manager, or call ``close`` at the end."""

    def __init__(self, total: int, description: str, unit: str) -> None:
        self.total, self.description, self.unit = total, description, unit
        self.done = 0
        self.started = time.perf_counter()
        self.kind = display_kind()
        self.bar = None
        if self.kind == "widget":
            from tqdm.notebook import tqdm
            self.bar = tqdm(total=total, desc=description, unit=unit)
        elif self.kind == "terminal":
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=description, unit=unit)

    def update(self, count: int = 1) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(count)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            return
        seconds = time.perf_counter() - self.started
        rate = f" ({self.done / seconds:,.0f} {self.unit}/s)" if seconds > 0 else ""
        print(f"{self.description}: {self.done:,} of {self.total:,} {self.unit}s in "
              f"{seconds:.1f} s{rate}")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exception) -> None:
        self.close()


def track(items: Iterable[Item], total: int, description: str, unit: str) -> Iterator[Item]:
    """Yield ``items``, counting each one in a ``Progress``."""
    with Progress(total, description, unit) as progress:
        for item in items:
            yield item
            progress.update()
