"""The login form and logout of a dashboard with access control (see auth.py).

POST /login takes the token from a form body (never a URL), sets the signed session cookie and
redirects to the page asked for (a path on this dashboard only: no open redirect); a refused
token answers 401 with the form again. Logs name the role and the client, never the token.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from fedblend.dashboard.auth import DashboardAuth
from fedblend.dashboard.web import base_of

__all__ = ["add_login_routes", "safe_next"]

log = logging.getLogger(__name__)


def safe_next(value: str | None) -> str:
    """``value`` when it is a path on this site, else "/"."""
    return value if value and value.startswith("/") and not value.startswith("//") and "\\" not in value else "/"


def add_login_routes(app: FastAPI, auth: DashboardAuth | None, templates: Jinja2Templates, title: str) -> None:
    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form(request: Request, next: str = "/") -> Response:
        if auth is None:
            return RedirectResponse(base_of(request) + "/", status_code=303)
        return templates.TemplateResponse(
            request, "login.html", {"base": base_of(request), "next": safe_next(next), "error": None, "title": title}
        )

    @app.post("/login", response_class=HTMLResponse, include_in_schema=False)
    async def login(request: Request) -> Response:
        base = base_of(request)
        if auth is None:
            return RedirectResponse(base + "/", status_code=303)
        body = (await request.body())[:8192].decode("utf-8", "replace")
        form = parse_qs(body)
        token = (form.get("token") or [""])[0].strip()
        nxt = safe_next((form.get("next") or ["/"])[0])
        role = auth.role_for_token(token) if token else None
        client = request.client.host if request.client else "?"
        if role is None:
            log.warning("dashboard: failed login from %s", client)
            return templates.TemplateResponse(
                request,
                "login.html",
                {"base": base, "next": nxt, "title": title, "error": "That token is not valid."},
                status_code=401,
            )
        log.info("dashboard: %s logged in from %s", role, client)
        resp = RedirectResponse(base + nxt, status_code=303)
        resp.set_cookie(
            auth.cookie_name,
            auth.make_session(role),
            max_age=int(auth.session_ttl_s),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path=(base or "") + "/",
        )
        return resp

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request) -> Response:
        base = base_of(request)
        resp = RedirectResponse(base + ("/login" if auth is not None else "/"), status_code=303)
        if auth is not None:
            resp.delete_cookie(auth.cookie_name, path=(base or "") + "/")
        return resp
