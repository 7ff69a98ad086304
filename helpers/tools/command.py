"""How every command line ends: one ``error:`` line and a non-zero status for bad input (a
``DataError``: exit 1) or Ctrl-C (exit 130), never a traceback. Outputs are written
atomically, so an interrupted command leaves no half-written file."""

from __future__ import annotations

import sys
from collections.abc import Callable

from helpers.errors import DataError


def exit_status(work: Callable[[], int | None]) -> int:
    """Run a command's ``work``; its exit status (``work``'s, 0 when it returns None)."""
    try:
        return work() or 0
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; nothing was half written (run it again)", file=sys.stderr)
        return 130
