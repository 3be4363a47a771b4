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
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

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
from fedblend.dashboard.login import add_login_routes
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
from fedblend.dashboard.web import (
    ERROR_SCHEMA,
    SecurityHeaders,
    ago,
    base_of,
    fmt,
    only_query,
    page_json,
    plotly_js_path,
)
from fedblend.errors import ConfigError
from fedblend.store.sqlite import SqlRunStore

__all__ = ["create_app", "PAGES"]

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
PAGES = [
    ("overview", "Overview", ""),
    ("training", "Training", "training"),
    ("blend", "Blend", "blend"),
    ("data", "Data", "data"),
    ("search", "Search", "search"),
]


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
        raise ConfigError(
            f"create_app: auth must be a DashboardAuth or None (got {auth!r} that is a {type(auth).__name__!r})"
        )
    if not poll_interval_s > 0:
        raise ConfigError(f"create_app: poll_interval_s must be > 0 (got {poll_interval_s!r})")
    from fedblend import __version__

    source = StoreSource(run_dir_or_store)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        source.close()  # only when served on its own: a mounted app's lifespan is its parent's

    app = FastAPI(
        title=title,
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
        description="Read-only views of one fedblend run: sites, rounds, blends, data, search.",
    )
    app.state.dashboard_source = source
    app.state.dashboard_auth = auth
    app.add_middleware(SecurityHeaders)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["fmt"] = fmt
    templates.env.filters["ago"] = ago
    templates.env.globals["pages"] = PAGES

    if auth is not None:
        bearer = HTTPBearer(
            auto_error=False, description="a viewer or admin token (or the login form's session cookie)"
        )

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
    strict = only_query()
    denied = (
        {}
        if auth is None
        else {
            401: {
                "description": "no valid token or session",
                "content": {"application/json": {"schema": ERROR_SCHEMA}},
            },
            403: {
                "description": "the token's role is too low",
                "content": {"application/json": {"schema": ERROR_SCHEMA}},
            },
        }
    )

    # -- static ---------------------------------------------------------------------------------
    plotly_path = plotly_js_path()

    @app.get("/vendor/plotly.min.js", include_in_schema=False)
    def plotly_js() -> FileResponse:
        return FileResponse(
            plotly_path, media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"}
        )

    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    add_login_routes(app, auth, templates, title)

    # -- pages ----------------------------------------------------------------------------------
    def render(request: Request, page: str, model: Any, charts: dict[str, Any], **extra: Any) -> Response:
        role: Role | None = None
        if auth is not None:
            role = auth.role_for_request(request)
            if role is None:
                target = request.url.path[len(base_of(request)) :] or "/"
                q = f"?next={target}" if target != "/" else ""
                return RedirectResponse(f"{base_of(request)}/login{q}", status_code=303)
        partial = request.query_params.get("partial") == "1"
        now = time.time()
        ctx = {
            "base": base_of(request),
            "page": page,
            "m": model,
            "run": model.run,
            "title": title,
            "layout": "partial.html" if partial else "base.html",
            "auth": auth is not None,
            "role": role,
            "is_admin": auth is None or role == "admin",
            "version": version_string(source.version()),
            "page_data": page_json({"page": page, "charts": charts, "now": now}),
            "now": now,
            **extra,
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
    @app.get("/api/whoami", response_model=WhoAmI, tags=["dashboard"], responses=denied, dependencies=[viewer, *strict])
    def whoami(role: Role | None = viewer) -> WhoAmI:
        """The caller's role (null on an open dashboard)."""
        return WhoAmI(role=role, auth=auth is not None)

    @app.get("/api/run", response_model=RunInfo, tags=["dashboard"], responses=denied, dependencies=[viewer, *strict])
    def api_run(_: Role | None = viewer) -> RunInfo:
        """The run's name, status and progress."""
        return run_info(source, source.get())

    @app.get(
        "/api/overview", response_model=Overview, tags=["dashboard"], responses=denied, dependencies=[viewer, *strict]
    )
    def api_overview(_: Role | None = viewer) -> Overview:
        """Site cards, the server's state and the round pipeline."""
        return build_overview(source, offline_after_s=offline_after_s)

    @app.get(
        "/api/training", response_model=Training, tags=["dashboard"], responses=denied, dependencies=[viewer, *strict]
    )
    def api_training(_: Role | None = viewer) -> Training:
        """Global and per-site metrics per round, participation and rejected updates."""
        return build_training(source)

    @app.get("/api/blends", response_model=Blends, tags=["dashboard"], responses=denied, dependencies=[viewer, *strict])
    def api_blends(_: Role | None = viewer) -> Blends:
        """Every blend synthesis: ratios, trials, decision and gain."""
        return build_blends(source)

    @app.get("/api/data", response_model=DataView, tags=["dashboard"], responses=denied, dependencies=[viewer, *strict])
    def api_data(_: Role | None = viewer) -> DataView:
        """Each site's privacy-safe data profile."""
        return build_data(source)

    @app.get("/api/search", response_model=Search, tags=["dashboard"], responses=denied, dependencies=[viewer, *strict])
    def api_search(_: Role | None = viewer) -> Search:
        """The trials of a tune run (or available = false)."""
        return build_search(source)

    @app.get(
        "/api/events",
        response_model=list[EventOut],
        tags=["dashboard"],
        responses=denied,
        dependencies=[viewer, *only_query("after", "limit")],  # the token first: 401 before 422
    )
    def api_events(
        after: int = Query(0, ge=0, le=2**62, description="only events with a larger id"),
        limit: int = Query(200, ge=1, le=1000),
        _: Role | None = viewer,
    ) -> list[EventOut]:
        """The run's events (round started, stage changes, rejected updates, ...) after an id, oldest first."""
        store = source.get()
        return [] if store is None else [event_out(e) for e in store.events(after_id=after, limit=limit)]

    @app.get("/api/job", response_model=JobDocument, tags=["admin"], responses=denied, dependencies=[admin, *strict])
    def api_job(_: Role | None = admin) -> JobDocument:
        """The run's job file with secret-looking values redacted (admin only)."""
        store = source.get()
        text = store.document("job.toml") if store is not None else None
        return JobDocument(name="job.toml", text=redact(text) if text else None)

    @app.get("/api/stream", include_in_schema=False)
    def api_stream(request: Request, _: Role | None = viewer) -> StreamingResponse:
        return StreamingResponse(
            event_stream(request, source, poll_s=poll_interval_s),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(_: Role | None = viewer) -> dict[str, Any]:
        return app.openapi()

    return app
