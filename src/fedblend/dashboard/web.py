"""HTTP plumbing of the dashboard: security headers, strict query parameters, template filters,
JSON for inline scripts, the mount prefix of a request, and where the Plotly bundle lives.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError

from fedblend.errors import ConfigError

__all__ = [
    "only_query",
    "ERROR_SCHEMA",
    "CSP",
    "plotly_js_path",
    "fmt",
    "ago",
    "page_json",
    "SecurityHeaders",
    "base_of",
]


def base_of(request: Request) -> str:
    """The prefix the app is mounted under ("" at the root, "/dashboard" when mounted there)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def only_query(*names: str) -> list[Any]:
    """A dependency list that answers 422 for a query parameter the endpoint does not take."""
    allowed = frozenset(names)

    def check(request: Request) -> None:
        unknown = sorted(set(request.query_params) - allowed)
        if unknown:
            takes = ", ".join(sorted(allowed)) or "no query parameters"
            raise RequestValidationError(
                [
                    {
                        "type": "extra_forbidden",
                        "loc": ["query", k],
                        "input": request.query_params[k],
                        "msg": f"unknown query parameter {k!r}; this endpoint takes {takes}",
                    }
                    for k in unknown
                ]
            )

    return [Depends(check)]


ERROR_SCHEMA = {"type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]}
CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)


def plotly_js_path() -> Path:
    """The Plotly bundle inside the ``plotly`` Python package (served locally: no CDN)."""
    import plotly

    path = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
    if not path.exists():
        raise ConfigError(
            f"the plotly package has no bundled plotly.min.js at {path}; reinstall it: pip install --force-reinstall plotly"
        )
    return path


def fmt(v: Any, digits: int = 4) -> str:
    if v is None or isinstance(v, float) and not math.isfinite(v):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def ago(ts: float | None, now: float | None = None) -> str:
    if ts is None:
        return "–"
    d = max(0.0, (now or time.time()) - ts)
    if d < 60:
        return f"{d:.0f} s ago"
    if d < 3600:
        return f"{d / 60:.0f} min ago"
    if d < 86400:
        return f"{d / 3600:.1f} h ago"
    return f"{d / 86400:.1f} days ago"


def page_json(obj: Any) -> str:
    """JSON safe to place inside a <script> element."""
    return (
        json.dumps(obj, separators=(",", ":"), allow_nan=False)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )


class SecurityHeaders:
    """Pure ASGI middleware (safe for streaming responses): CSP and friends on every response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                for k, v in (
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"),
                ):
                    if k not in names:
                        headers.append((k, v))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
