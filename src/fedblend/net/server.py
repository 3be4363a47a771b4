"""The fleet server: a FastAPI app over the DeploymentPool, served by uvicorn with mutual TLS.

Every request carries the verified client certificate (``net.tls``); the site's name is the
certificate's common name and nothing else. Revoked certificates are refused on every request
(the revocation list is re-read when it changes). Admin endpoints need an admin certificate *and*
the admin token (``Authorization: Bearer ...``) from ``admin.bundle``.

Bad input never reaches the round loop unchecked and never kills the server: oversized bodies are
refused before they are read (413), malformed JSON and unknown fields are 422, unknown routes are
404, and each refusal is recorded against the site that sent it (event ``request_rejected``).

Run it through the CLI: ``fedblend server --job JOB.toml --state DIR --ca CA_DIR``.
"""

from __future__ import annotations

import hmac
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from fedblend.net.ca import RevocationList
from fedblend.net.coordinator import Coordinator
from fedblend.net.identity import ADMIN_ROLE, SITE_ROLE, Identity, hash_token
from fedblend.net.pool import DeploymentPool
from fedblend.net.tls import identity_of, peer_cert_protocol, server_ssl_settings
from fedblend.net.wire import (
    AdminAction,
    AdminStatus,
    ChunkAck,
    EvalResult,
    Heartbeat,
    HeartbeatReply,
    Hello,
    Receipt,
    Registered,
    Registration,
    TaskFailure,
    UploadManifest,
    UploadTicket,
    WireError,
    WorkItem,
)

__all__ = ["create_app", "serve", "tune_malloc", "JSON_LIMIT_BYTES"]

log = logging.getLogger(__name__)
JSON_LIMIT_BYTES = 4 * 1024 * 1024
_PIECE = 256 * 1024


class _TooLarge(Exception):
    def __init__(self, limit: int) -> None:
        self.limit = limit


def _limit_for(scope: dict[str, Any], chunk_limit: int) -> int:
    return chunk_limit + 1024 if scope.get("method") == "PUT" and "/chunks/" in scope.get("path", "") else JSON_LIMIT_BYTES


class _BodyLimit:
    """Refuse bodies above the limit: by Content-Length up front, else while they stream in."""

    def __init__(self, app: Any, chunk_limit: int, on_reject: Callable[[dict[str, Any], str], None]) -> None:
        self.app, self.chunk_limit, self.on_reject = app, chunk_limit, on_reject

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = _limit_for(scope, self.chunk_limit)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            detail = f"request body of {length.decode(errors='replace')} bytes exceeds the limit of {limit} bytes"
            self.on_reject(scope, detail)
            resp = JSONResponse({"error": "too_large", "detail": detail}, status_code=413, headers={"connection": "close"})
            await resp(scope, receive, send)
            return
        seen = 0

        async def limited() -> Any:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise _TooLarge(limit)
            return msg

        await self.app(scope, limited, send)


class _AdminOnly:
    """Guard for mounted apps (the dashboard): an admin certificate is required."""

    def __init__(self, app: Any, revocations: RevocationList) -> None:
        self.app, self.revocations = app, revocations

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            ident = identity_of(scope)
            if ident is None or ident.role != ADMIN_ROLE or self.revocations.is_revoked(ident.serial):
                if scope["type"] == "http":
                    await JSONResponse({"error": "forbidden", "detail": "the dashboard needs the admin certificate"},
                                       status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(pool: DeploymentPool, *, revocations: RevocationList, admin_token_hash: str | None = None,
               coordinator: Coordinator | None = None, revoke: Callable[[str, str], list[str]] | None = None,
               mounts: dict[str, Any] | None = None) -> Any:
    """The fleet API as an ASGI app (its FastAPI app, with the OpenAPI schema, is ``.app``).

    ``revoke(site, reason)`` adds a site's certificates to the revocation list.
    """
    app = FastAPI(title="fedblend fleet API", version="1", docs_url=None, redoc_url=None,
                  description="Site agents register, beat, fetch work, stream models and updates.")

    def _site_of(request: Request) -> str | None:
        ident = identity_of(request.scope)
        return ident.name if ident is not None else None

    def _record(request: Request, code: str, detail: str) -> None:
        pool.record_rejection(_site_of(request), code, detail, f"{request.method} {request.url.path}")

    @app.exception_handler(WireError)
    async def _wire_error(request: Request, exc: WireError) -> JSONResponse:
        if exc.record:
            _record(request, exc.code, exc.detail)
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors()[:10]:
            loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
            parts.append(f"{loc}: {e.get('msg')}")
        detail = "malformed request: " + "; ".join(parts)
        _record(request, "bad_request", detail)
        return JSONResponse({"error": "bad_request", "detail": detail}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code in (404, 405):
            detail = f"unknown message type: {request.method} {request.url.path}"
            _record(request, "not_found", detail)
            return JSONResponse({"error": "not_found", "detail": detail}, status_code=exc.status_code)
        return JSONResponse({"error": "http_error", "detail": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(_TooLarge)
    async def _too_large(request: Request, exc: _TooLarge) -> JSONResponse:
        detail = f"request body exceeds the limit of {exc.limit} bytes"
        _record(request, "too_large", detail)
        return JSONResponse({"error": "too_large", "detail": detail}, status_code=413, headers={"connection": "close"})

    def verified(request: Request) -> Identity:
        ident = identity_of(request.scope)
        if ident is None:
            raise WireError("unauthenticated", "no verified client certificate on this connection; use your site bundle")
        if revocations.is_revoked(ident.serial):
            if ident.role == SITE_ROLE:
                pool.drop_site(ident.name, "certificate revoked")
            raise WireError("certificate_revoked", f"the certificate of {ident.name!r} (serial {ident.serial}) is revoked; "
                            "ask the federation operator for a new bundle", record=True)
        return ident

    def site(ident: Identity = Depends(verified)) -> str:
        if ident.role != SITE_ROLE:
            raise WireError("forbidden", f"a {ident.role} certificate cannot act as a site")
        return ident.name

    def admin(request: Request, ident: Identity = Depends(verified)) -> Identity:
        if ident.role != ADMIN_ROLE:
            raise WireError("forbidden", "admin actions need the admin certificate and token (admin.bundle)", record=True)
        auth = request.headers.get("authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else ""
        if not token:
            raise WireError("unauthenticated", "admin actions need 'Authorization: Bearer <admin token>'")
        if admin_token_hash is None or not hmac.compare_digest(hash_token(token), admin_token_hash):
            raise WireError("forbidden", "wrong admin token", record=True)
        return ident

    # -- site API --------------------------------------------------------------------------------
    @app.get("/v1/ping")
    def ping(ident: Identity = Depends(verified)) -> dict[str, Any]:
        return {"ok": True, "server_id": pool.server_id, "you": ident.name}

    @app.get("/v1/hello", response_model=Hello)
    def hello(name: str = Depends(site)) -> Hello:
        return pool.hello(name)

    @app.post("/v1/register", response_model=Registered)
    def register(reg: Registration, name: str = Depends(site)) -> Registered:
        return pool.register(name, reg)

    @app.post("/v1/heartbeat", response_model=HeartbeatReply)
    def heartbeat(hb: Heartbeat, name: str = Depends(site)) -> HeartbeatReply:
        return pool.heartbeat(name, hb)

    @app.get("/v1/work", response_model=WorkItem, response_model_exclude_none=True)  # no job_id: old agents still parse it
    async def work(wait: float = Query(default=0.0, ge=0.0, le=300.0), name: str = Depends(site)) -> WorkItem:
        import asyncio

        item = await run_in_threadpool(pool.next_work, name)
        if item is not None or wait <= 0:
            return item or WorkItem(kind="wait", retry_after_s=1.0, message=pool.mode_message)
        loop = asyncio.get_running_loop()
        ev = asyncio.Event()
        token = pool.add_waiter(name, lambda: loop.call_soon_threadsafe(ev.set))
        try:
            end = loop.time() + min(wait, pool.spec.long_poll_s)
            while item is None:
                ev.clear()
                item = await run_in_threadpool(pool.next_work, name)
                left = end - loop.time()
                if item is not None or left <= 0:
                    break
                try:
                    await asyncio.wait_for(ev.wait(), timeout=left)
                except TimeoutError:
                    item = await run_in_threadpool(pool.next_work, name)
                    break
        finally:
            pool.remove_waiter(name, token)
        return item or WorkItem(kind="wait", retry_after_s=0.0, message=pool.mode_message)

    @app.get("/v1/models/{model_id}/chunks/{index}", response_class=Response)
    def model_chunk(model_id: str, index: int, name: str = Depends(site)) -> Response:
        path, offset, length = pool.chunk_span(name, model_id, index)
        try:
            f = open(path, "rb")  # closed by the generator below
        except FileNotFoundError:
            raise WireError("gone", f"model {model_id!r} is no longer offered (its round is over); fetch new work") from None

        def pieces() -> Any:  # streamed in small pieces: memory per download stays ~256 KiB
            with f:
                f.seek(offset)
                left = length
                while left > 0:
                    b = f.read(min(_PIECE, left))
                    if not b:
                        return
                    left -= len(b)
                    yield b

        return StreamingResponse(pieces(), media_type="application/octet-stream", headers={"content-length": str(length)})

    @app.post("/v1/tasks/{task_id}/upload", response_model=UploadTicket)
    def begin_upload(task_id: str, manifest: UploadManifest, name: str = Depends(site)) -> UploadTicket:
        return pool.begin_upload(name, task_id, manifest)

    @app.put("/v1/uploads/{upload_id}/chunks/{index}", response_model=ChunkAck)
    async def put_chunk(upload_id: str, index: int, request: Request, name: str = Depends(site)) -> ChunkAck:
        writer = await run_in_threadpool(pool.chunk_writer, name, upload_id, index)
        try:  # written to the spool file as it arrives: nothing of the chunk is buffered
            async for piece in request.stream():
                if piece:
                    writer.write(piece)
            writer.finish()
        finally:
            writer.abort()
        return pool.chunk_ack(upload_id, index)

    @app.post("/v1/uploads/{upload_id}/commit", response_model=Receipt)
    def commit(upload_id: str, name: str = Depends(site)) -> Receipt:
        return pool.commit_upload(name, upload_id)

    @app.post("/v1/tasks/{task_id}/eval", response_model=Receipt)
    def submit_eval(task_id: str, res: EvalResult, name: str = Depends(site)) -> Receipt:
        return pool.submit_eval(name, task_id, res)

    @app.post("/v1/tasks/{task_id}/fail", response_model=Receipt)
    def fail(task_id: str, body: TaskFailure, name: str = Depends(site)) -> Receipt:
        return pool.fail_task(name, task_id, body.reason)

    # -- admin API -------------------------------------------------------------------------------
    @app.get("/admin/status", response_model=AdminStatus)
    def admin_status(_: Identity = Depends(admin)) -> AdminStatus:
        c = coordinator
        return AdminStatus(server_id=pool.server_id, status=c.status if c else "serving", round=c.round if c else 0,
                           rounds=c.total_rounds if c else 0, cycle=c.cycle if c else 0, sites=pool.sites_view())

    @app.post("/admin/actions")
    def admin_action(act: AdminAction, _: Identity = Depends(admin)) -> dict[str, Any]:
        if act.action == "stop":
            if coordinator is None:
                raise WireError("unavailable", "no job runs on this server")
            coordinator.admin_stop()
            return {"ok": True, "detail": "the job stops after the current round"}
        if act.action == "start":
            if coordinator is None:
                raise WireError("unavailable", "no job runs on this server")
            coordinator.admin_start()
            return {"ok": True, "detail": "the job runs (a new cycle starts now if it was idle)"}
        if not act.site:
            raise WireError("bad_request", "revoke needs 'site'")
        if revoke is None:
            raise WireError("unavailable", "this server cannot revoke certificates (no writable revocation list)")
        serials = revoke(act.site, act.reason)
        revocations.refresh(force=True)
        pool.drop_site(act.site, "certificate revoked")
        return {"ok": True, "detail": f"revoked {len(serials)} certificate(s) of {act.site!r}", "serials": serials}

    for path, sub in (mounts or {}).items():
        app.mount(path, _AdminOnly(sub, revocations))

    def _on_reject(scope: dict[str, Any], detail: str) -> None:
        ident = identity_of(scope)
        pool.record_rejection(ident.name if ident else None, "too_large", detail, f"{scope.get('method')} {scope.get('path')}")

    return _BodyLimit(app, pool.spec.chunk_bytes, _on_reject)


def tune_malloc(mmap_threshold: int = 1 << 20, arenas: int = 4) -> bool:
    """glibc only: buffers above ``mmap_threshold`` get their own mapping and go back to the OS when
    freed, and at most ``arenas`` malloc arenas exist. Without this, the chunk-sized buffers of many
    request threads pile up in per-thread arenas and the server's RSS creeps up round after round.
    Call it once, early, in the server process; returns False where it does not apply."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(name)
        m_mmap_threshold, m_arena_max = -3, -8  # from malloc.h
        return bool(libc.mallopt(m_mmap_threshold, int(mmap_threshold))) and bool(libc.mallopt(m_arena_max, int(arenas)))
    except (OSError, AttributeError):
        return False


def serve(app: Any, *, host: str, port: int, cert: str, key: str, ca: str,
          on_started: Callable[[int], None] | None = None, until: Callable[[], bool] | None = None,
          log_level: str = "warning") -> None:
    """Run ``app`` over HTTPS with required client certificates until ``until()`` is true (or a signal)."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, http=peer_cert_protocol(), lifespan="off", log_level=log_level,
                            access_log=False, timeout_keep_alive=30, **server_ssl_settings(cert, key, ca))
    server = uvicorn.Server(config)

    def watch() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if server.started and on_started is not None:
            sockets = [s for srv in (server.servers or []) for s in srv.sockets]
            on_started(int(sockets[0].getsockname()[1]) if sockets else port)
        while until is not None and not server.should_exit:
            if until():
                server.should_exit = True
                return
            time.sleep(0.1)

    threading.Thread(target=watch, name="fedblend-server-watch", daemon=True).start()
    server.run()
