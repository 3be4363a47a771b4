"""Server-sent events: tell open pages when the run store changed, so they refresh in place.

The stream polls the store's fingerprint (``StoreSource.version``: newest event id, last
committed round, run status, site rows) every ``poll_s`` seconds in a worker thread and sends::

    event: update
    id: <newest event id>
    data: {"version": "...", "last_event": 42, "round": 3, "status": "running"}

once on connect and then whenever the fingerprint changes; a comment line every ``keepalive_s``
keeps proxies from closing an idle stream. A stream ends after ``max_s`` seconds and the browser's
EventSource reconnects by itself (``retry``), so no connection lives forever.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from fedblend.dashboard.source import StoreSource

__all__ = ["version_string", "event_stream"]


def version_string(version: tuple[object, ...]) -> str:
    return hashlib.sha1(repr(version).encode()).hexdigest()[:16]


def _message(version: tuple[object, ...]) -> str:
    last_event = version[0] if len(version) > 1 else None
    data = {
        "version": version_string(version),
        "last_event": last_event,
        "round": version[1] if len(version) > 1 else None,
        "status": version[2] if len(version) > 2 else None,
    }
    head = f"id: {last_event}\n" if isinstance(last_event, int) else ""
    return f"event: update\n{head}data: {json.dumps(data)}\n\n"


async def event_stream(
    request: Request, source: StoreSource, *, poll_s: float = 0.5, keepalive_s: float = 15.0, max_s: float = 300.0
) -> AsyncIterator[str]:
    yield "retry: 1500\n\n"
    last: tuple[object, ...] | None = None
    started = quiet_since = time.monotonic()
    while True:
        if await request.is_disconnected():
            return
        version = await run_in_threadpool(source.version)
        now = time.monotonic()
        if version != last and version != ("busy",):
            last = version
            quiet_since = now
            yield _message(version)
        elif now - quiet_since >= keepalive_s:
            quiet_since = now
            yield ": keepalive\n\n"
        if now - started >= max_s:
            return
        await asyncio.sleep(poll_s)
