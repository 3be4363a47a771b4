"""Shared CLI helpers: consoles, error exits, table formatting."""

from __future__ import annotations

import math
import sys
from typing import Any

from rich.console import Console

# Wide enough for the results tables when output goes to a file or a CI log.
_width = None if sys.stdout.isatty() else 140
console = Console(highlight=False, width=_width)
err_console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 140)


def fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.{digits}f}"
    return str(v)
