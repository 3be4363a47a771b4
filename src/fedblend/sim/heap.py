"""Give freed heap memory back to the operating system between rounds (glibc only).

A round allocates and frees its minibatch gathers and stacked buffers; glibc keeps part of the
freed memory for reuse, so the resident set creeps up by a fraction of a megabyte per round even
though nothing leaks. ``trim_heap()`` after a round (``malloc_trim(0)``, a few milliseconds) keeps
the simulator's memory flat across rounds. Elsewhere it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import cache
from typing import Any

__all__ = ["trim_heap"]


@cache
def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def trim_heap() -> bool:
    """Return freed heap memory to the OS: True when some was returned, False when there was none
    to return or the C library is not glibc."""
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
