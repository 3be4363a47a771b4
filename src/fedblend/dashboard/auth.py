"""Access control for a dashboard served by the deployment server: viewer and admin tokens.

A request proves its role with ``Authorization: Bearer <token>`` or with the session cookie the
login form sets. Tokens are kept only as SHA-256 digests and compared in constant time; the
session cookie holds ``role.expiry.nonce.signature`` (HMAC-SHA256 under a per-process key), never
the token, and is ``HttpOnly`` and ``SameSite=Strict`` (``Secure`` over HTTPS). Tokens are never
accepted in a query string, where they would land in access logs. An admin may do what a viewer
may, plus read admin-only data (the job file, redacted) and whatever the server adds behind
``require("admin")``.

    auth = DashboardAuth(viewer_tokens=["..."], admin_tokens=["..."])
    app = create_app(store, auth=auth)
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Literal

from fastapi import HTTPException, Request

from fedblend.errors import ConfigError

__all__ = ["DashboardAuth", "Role", "redact", "MIN_TOKEN_LENGTH"]

log = logging.getLogger(__name__)

Role = Literal["viewer", "admin"]
MIN_TOKEN_LENGTH = 16
_RANK = {"viewer": 1, "admin": 2}


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class DashboardAuth:
    """Viewer and admin tokens, and signed session cookies for the login form."""

    def __init__(
        self,
        *,
        viewer_tokens: Iterable[str] = (),
        admin_tokens: Iterable[str] = (),
        session_ttl_s: float = 8 * 3600,
        cookie_name: str = "fedblend_session",
        session_key: bytes | None = None,
    ) -> None:
        self._tokens: list[tuple[bytes, Role]] = []
        seen: dict[bytes, Role] = {}
        for role, tokens in (("viewer", viewer_tokens), ("admin", admin_tokens)):
            if isinstance(tokens, str):
                raise ConfigError(f"DashboardAuth: {role}_tokens must be a list of tokens, not one string")
            for i, tok in enumerate(tokens):
                if not isinstance(tok, str) or len(tok) < MIN_TOKEN_LENGTH:
                    got = f"a {type(tok).__name__}" if not isinstance(tok, str) else f"{len(tok)} characters"
                    raise ConfigError(
                        f"DashboardAuth: {role} token #{i + 1} must be a string of at least {MIN_TOKEN_LENGTH} characters "
                        f"(got {got}); generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
                    )
                d = _digest(tok)
                if d in seen and seen[d] != role:
                    raise ConfigError(
                        f"DashboardAuth: token #{i + 1} is both a viewer and an admin token; give each role its own"
                    )
                seen[d] = role  # type: ignore[assignment]
                self._tokens.append((d, role))  # type: ignore[arg-type]
        if not self._tokens:
            raise ConfigError(
                "DashboardAuth needs at least one viewer or admin token (or pass auth=None for an open dashboard)"
            )
        if session_ttl_s <= 0:
            raise ConfigError(f"DashboardAuth: session_ttl_s must be > 0 (got {session_ttl_s!r})")
        self.session_ttl_s = float(session_ttl_s)
        self.cookie_name = cookie_name
        self._key = session_key or secrets.token_bytes(32)

    def __repr__(self) -> str:  # never show digests or the key
        roles = sorted({r for _, r in self._tokens})
        return f"DashboardAuth(roles={roles}, tokens={len(self._tokens)})"

    # -- tokens and sessions ---------------------------------------------------------------------
    def role_for_token(self, token: str) -> Role | None:
        d = _digest(token)
        found: Role | None = None
        for known, role in self._tokens:  # no early exit: the time does not depend on which matched
            if hmac.compare_digest(known, d):
                found = role
        return found

    def make_session(self, role: Role) -> str:
        expiry = int(time.time() + self.session_ttl_s)
        body = f"{role}.{expiry}.{secrets.token_hex(8)}"
        sig = hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()
        return f"{body}.{sig}"

    def role_for_session(self, value: str) -> Role | None:
        parts = value.split(".")
        if len(parts) != 4:
            return None
        role, expiry, nonce, sig = parts
        want = hmac.new(self._key, f"{role}.{expiry}.{nonce}".encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(want, sig) or role not in _RANK:
            return None
        if not expiry.isdigit() or int(expiry) < time.time():
            return None
        return role  # type: ignore[return-value]

    def role_for_request(self, request: Request) -> Role | None:
        header = request.headers.get("authorization", "")
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return self.role_for_token(token.strip())
            return None
        cookie = request.cookies.get(self.cookie_name)
        return self.role_for_session(cookie) if cookie else None

    # -- FastAPI dependencies ---------------------------------------------------------------------
    def require(self, role: Role) -> Callable[[Request], Role]:
        """A dependency that answers 401 (no valid credential) or 403 (too low a role)."""

        def dep(request: Request) -> Role:
            got = self.role_for_request(request)
            if got is None:
                raise HTTPException(
                    401,
                    "a valid viewer or admin token is needed (Authorization: Bearer <token>, or log in)",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            if _RANK[got] < _RANK[role]:
                raise HTTPException(403, f"this needs the {role} role (you are {got})")
            return got

        return dep


_SECRET_KEY = re.compile(
    r"(?im)^(\s*[\w.\"'-]*(?:secret|token|password|passwd|private_key|api_key|credential)[\w.\"'-]*\s*=\s*).+$"
)
_URL_PASSWORD = re.compile(r"(\w+://[^:/@\s\"']+:)[^@\s\"']+@")


def redact(text: str) -> str:
    """``text`` (a TOML document) with secret-looking values and URL passwords replaced by ***."""
    text = _SECRET_KEY.sub(lambda m: m.group(1) + '"***"', text)
    return _URL_PASSWORD.sub(lambda m: m.group(1) + "***@", text)
