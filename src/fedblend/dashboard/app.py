"""create_app: the dashboard as a FastAPI app over one run store (read only, live).

    fedblend dashboard runs/heart-fedavg            # a simulation's run directory, on 127.0.0.1
    server.mount("/dashboard", create_app(store, auth=DashboardAuth(viewer_tokens=[...])))

Pages (server-rendered HTML; the charts are drawn by the locally served Plotly bundle):
``/`` overview, ``/training``, ``/blend``, ``/data``, ``/search``; ``?partial=1`` returns just the
page's content, which the page's script swaps in when the live stream (``/api/stream``, server-
sent events) says the store changed. JSON API under ``/api/`` with pydantic response models
(``/openapi.json``). Every link is relative to the mount point, so the app works under any prefix.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import Depends, FastAPI, Query, Request, Security
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from fedblend.dashboard import charts as ch
from fedblend.dashboard.auth import DashboardAuth, Role, redact
from fedblend.dashboard.blendview import build_blends
from fedblend.dashboard.dataview import build_data
from fedblend.dashboard.live import event_stream, version_string
from fedblend.dashboard.models import (
    Blends,
    DataView,
    EventOut,
    JobDocument,
    Overview,
    RunInfo,
    Search,
    Training,
    WhoAmI,
)
from fedblend.dashboard.overview import build_overview
from fedblend.dashboard.search import build_search
from fedblend.dashboard.source import StoreSource
from fedblend.dashboard.training import build_training
from fedblend.dashboard.util import event_out, run_info
from fedblend.errors import ConfigError
from fedblend.store.sqlite import SqlRunStore

__all__ = ["create_app", "plotly_js_path", "PAGES"]

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
PAGES = [("overview", "Overview", ""), ("training", "Training", "training"), ("blend", "Blend", "blend"),
         ("data", "Data", "data"), ("search", "Search", "search")]
_ERROR = {"type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]}
_CSP = ("default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")


def plotly_js_path() -> Path:
    """The Plotly bundle inside the ``plotly`` Python package (served locally: no CDN)."""
    import plotly

    path = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
    if not path.exists():
        raise ConfigError(f"the plotly package has no bundled plotly.min.js at {path}; reinstall it: pip install --force-reinstall plotly")
    return path


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or isinstance(v, float) and not math.isfinite(v):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _ago(ts: float | None, now: float | None = None) -> str:
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


def _page_json(obj: Any) -> str:
    """JSON safe to place inside a <script> element."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


class _SecurityHeaders:
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
                for k, v in ((b"content-security-policy", _CSP.encode()), (b"x-content-type-options", b"nosniff"),
                             (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY")):
                    if k not in names:
                        headers.append((k, v))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(
    run_dir_or_store: str | Path | SqlRunStore,
    *,
    auth: DashboardAuth | None = None,
    poll_interval_s: float = 0.5,
    offline_after_s: float = 60.0,
    title: str = "fedblend dashboard",
) -> FastAPI:
    """The dashboard over one run (a run directory, opened when its run.db appears, or a store).

    ``auth=None`` leaves it open (for ``fedblend dashboard`` on 127.0.0.1); a ``DashboardAuth``
    asks every page and API call for a viewer or admin token.
    """
    if auth is not None and not isinstance(auth, DashboardAuth):
        raise ConfigError(f"create_app: auth must be a DashboardAuth or None (got {auth!r} that is a {type(auth).__name__!r})")
    if not poll_interval_s > 0:
        raise ConfigError(f"create_app: poll_interval_s must be > 0 (got {poll_interval_s!r})")
    from fedblend import __version__

    source = StoreSource(run_dir_or_store)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        source.close()  # only when served on its own: a mounted app's lifespan is its parent's

    app = FastAPI(title=title, version=__version__, docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan,
                  description="Read-only views of one fedblend run: sites, rounds, blends, data, search.")
    app.state.dashboard_source = source
    app.state.dashboard_auth = auth
    app.add_middleware(_SecurityHeaders)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["fmt"] = _fmt
    templates.env.filters["ago"] = _ago
    templates.env.globals["pages"] = PAGES

    if auth is not None:
        bearer = HTTPBearer(auto_error=False, description="a viewer or admin token (or the login form's session cookie)")

        def viewer_dep(request: Request, _c: HTTPAuthorizationCredentials | None = Security(bearer)) -> Role | None:
            return auth.require("viewer")(request)

        def admin_dep(request: Request, _c: HTTPAuthorizationCredentials | None = Security(bearer)) -> Role | None:
            return auth.require("admin")(request)
    else:

        def viewer_dep() -> Role | None:  # type: ignore[misc]
            return None

        admin_dep = viewer_dep  # an open dashboard (127.0.0.1): its user is the operator

    viewer = Depends(viewer_dep)
    admin = Depends(admin_dep)
    denied = {} if auth is None else {
        401: {"description": "no valid token or session", "content": {"application/json": {"schema": _ERROR}}},
        403: {"description": "the token's role is too low", "content": {"application/json": {"schema": _ERROR}}},
    }

    def base_of(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    # -- static ---------------------------------------------------------------------------------
    plotly_path = plotly_js_path()

    @app.get("/vendor/plotly.min.js", include_in_schema=False)
    def plotly_js() -> FileResponse:
        return FileResponse(plotly_path, media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"})

    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    # -- login ----------------------------------------------------------------------------------
    def _safe_next(value: str | None) -> str:
        return value if value and value.startswith("/") and not value.startswith("//") and "\\" not in value else "/"

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form(request: Request, next: str = "/") -> Response:
        if auth is None:
            return RedirectResponse(base_of(request) + "/", status_code=303)
        return templates.TemplateResponse(request, "login.html", {"base": base_of(request), "next": _safe_next(next),
                                                                   "error": None, "title": title})

    @app.post("/login", response_class=HTMLResponse, include_in_schema=False)
    async def login(request: Request) -> Response:
        base = base_of(request)
        if auth is None:
            return RedirectResponse(base + "/", status_code=303)
        body = (await request.body())[:8192].decode("utf-8", "replace")
        form = parse_qs(body)
        token = (form.get("token") or [""])[0].strip()
        nxt = _safe_next((form.get("next") or ["/"])[0])
        role = auth.role_for_token(token) if token else None
        client = request.client.host if request.client else "?"
        if role is None:
            log.warning("dashboard: failed login from %s", client)
            return templates.TemplateResponse(request, "login.html", {"base": base, "next": nxt, "title": title,
                                                                       "error": "That token is not valid."}, status_code=401)
        log.info("dashboard: %s logged in from %s", role, client)
        resp = RedirectResponse(base + nxt, status_code=303)
        resp.set_cookie(auth.cookie_name, auth.make_session(role), max_age=int(auth.session_ttl_s), httponly=True,
                        samesite="strict", secure=request.url.scheme == "https", path=(base or "") + "/")
        return resp

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request) -> Response:
        base = base_of(request)
        resp = RedirectResponse(base + ("/login" if auth is not None else "/"), status_code=303)
        if auth is not None:
            resp.delete_cookie(auth.cookie_name, path=(base or "") + "/")
        return resp

    # -- pages ----------------------------------------------------------------------------------
    def render(request: Request, page: str, model: Any, charts: dict[str, Any], **extra: Any) -> Response:
        role: Role | None = None
        if auth is not None:
            role = auth.role_for_request(request)
            if role is None:
                target = request.url.path[len(base_of(request)):] or "/"
                q = f"?next={target}" if target != "/" else ""
                return RedirectResponse(f"{base_of(request)}/login{q}", status_code=303)
        partial = request.query_params.get("partial") == "1"
        now = time.time()
        ctx = {
            "base": base_of(request), "page": page, "m": model, "run": model.run, "title": title,
            "layout": "partial.html" if partial else "base.html", "auth": auth is not None, "role": role,
            "is_admin": auth is None or role == "admin", "version": version_string(source.version()),
            "page_data": _page_json({"page": page, "charts": charts, "now": now}), "now": now, **extra,
        }
        return templates.TemplateResponse(request, f"{page}.html", ctx, headers={"Cache-Control": "no-store"})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def overview_page(request: Request) -> Response:
        ov = build_overview(source, offline_after_s=offline_after_s)
        tr = build_training(source)
        job = None
        store = source.get()
        if store is not None and (auth is None or auth.role_for_request(request) == "admin"):
            text = store.document("job.toml")
            job = redact(text) if text else None
        return render(request, "overview", ov, ch.overview_charts(ov, tr), training=tr, job=job)

    @app.get("/training", response_class=HTMLResponse, include_in_schema=False)
    def training_page(request: Request) -> Response:
        tr = build_training(source)
        return render(request, "training", tr, ch.training_charts(tr))

    @app.get("/blend", response_class=HTMLResponse, include_in_schema=False)
    def blend_page(request: Request) -> Response:
        b = build_blends(source)
        return render(request, "blend", b, ch.blend_charts(b))

    @app.get("/data", response_class=HTMLResponse, include_in_schema=False)
    def data_page(request: Request) -> Response:
        d = build_data(source)
        return render(request, "data", d, ch.data_charts(d))

    @app.get("/search", response_class=HTMLResponse, include_in_schema=False)
    def search_page(request: Request) -> Response:
        s = build_search(source)
        return render(request, "search", s, ch.search_charts(s))

    # -- JSON API -------------------------------------------------------------------------------
    @app.get("/api/whoami", response_model=WhoAmI, tags=["dashboard"], responses=denied)
    def whoami(role: Role | None = viewer) -> WhoAmI:
        """The caller's role (null on an open dashboard)."""
        return WhoAmI(role=role, auth=auth is not None)

    @app.get("/api/run", response_model=RunInfo, tags=["dashboard"], responses=denied)
    def api_run(_: Role | None = viewer) -> RunInfo:
        """The run's name, status and progress."""
        return run_info(source, source.get())

    @app.get("/api/overview", response_model=Overview, tags=["dashboard"], responses=denied)
    def api_overview(_: Role | None = viewer) -> Overview:
        """Site cards, the server's state and the round pipeline."""
        return build_overview(source, offline_after_s=offline_after_s)

    @app.get("/api/training", response_model=Training, tags=["dashboard"], responses=denied)
    def api_training(_: Role | None = viewer) -> Training:
        """Global and per-site metrics per round, participation and rejected updates."""
        return build_training(source)

    @app.get("/api/blends", response_model=Blends, tags=["dashboard"], responses=denied)
    def api_blends(_: Role | None = viewer) -> Blends:
        """Every blend synthesis: ratios, trials, decision and gain."""
        return build_blends(source)

    @app.get("/api/data", response_model=DataView, tags=["dashboard"], responses=denied)
    def api_data(_: Role | None = viewer) -> DataView:
        """Each site's privacy-safe data profile."""
        return build_data(source)

    @app.get("/api/search", response_model=Search, tags=["dashboard"], responses=denied)
    def api_search(_: Role | None = viewer) -> Search:
        """The trials of a tune run (or available = false)."""
        return build_search(source)

    @app.get("/api/events", response_model=list[EventOut], tags=["dashboard"], responses=denied)
    def api_events(
        after: int = Query(0, ge=0, le=2**62, description="only events with a larger id"),
        limit: int = Query(200, ge=1, le=1000),
        _: Role | None = viewer,
    ) -> list[EventOut]:
        """The run's events (round started, stage changes, rejected updates, ...) after an id, oldest first."""
        store = source.get()
        return [] if store is None else [event_out(e) for e in store.events(after_id=after, limit=limit)]

    @app.get("/api/job", response_model=JobDocument, tags=["admin"], responses=denied)
    def api_job(_: Role | None = admin) -> JobDocument:
        """The run's job file with secret-looking values redacted (admin only)."""
        store = source.get()
        text = store.document("job.toml") if store is not None else None
        return JobDocument(name="job.toml", text=redact(text) if text else None)

    @app.get("/api/stream", include_in_schema=False)
    def api_stream(request: Request, _: Role | None = viewer) -> StreamingResponse:
        return StreamingResponse(event_stream(request, source, poll_s=poll_interval_s), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(_: Role | None = viewer) -> dict[str, Any]:
        return app.openapi()

    return app
