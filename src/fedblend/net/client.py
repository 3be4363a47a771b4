"""FleetClient: the site's HTTPS client (httpx) with reconnects, backoff and TLS diagnosis.

- Connection refused, reset, or a 5xx answer: retry with exponential backoff (capped, with seeded
  jitter) until the server is back or ``give_up_s`` passed. A restarted server is found again.
- The server's certificate is not signed by the bundle's CA: ``ServerUntrusted``, no retry.
- The server refuses *our* certificate (revoked, expired, another CA, none): under TLS 1.3 the
  client only sees the connection close without an answer. The client then probes with a raw TLS
  connection; a handshake that completes but gets no HTTP answer twice in a row means the
  certificate was rejected: ``CertificateRejected``, no retry. A revoked certificate that the TLS
  layer accepts gets a 403 ``certificate_revoked`` answer, which is ``CertificateRejected`` too.
- Any other 4xx answer is an ``ApiError`` with the server's reason, for the caller to handle.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np

from fedblend.errors import TransportError
from fedblend.net.identity import SiteBundle

__all__ = ["FleetClient", "ApiError", "CertificateRejected", "ServerUntrusted"]

log = logging.getLogger(__name__)


class ApiError(TransportError):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"server answered {status} {code}: {detail}")
        self.status, self.code, self.detail = status, code, detail


class CertificateRejected(TransportError):
    """The server refuses this site's certificate; retrying cannot help."""


class ServerUntrusted(TransportError):
    """The server's certificate is not signed by the CA in the site bundle."""


def _cause_chain(exc: BaseException) -> list[BaseException]:
    out, seen = [], set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        out.append(e)
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return out


class FleetClient:
    def __init__(self, bundle: SiteBundle, server_url: str | None = None, *, timeout: float = 120.0,
                 give_up_s: float = 600.0, backoff_s: tuple[float, float] = (0.2, 10.0), seed: int = 0) -> None:
        self.bundle = bundle
        self.base_url = (server_url or bundle.server_url).rstrip("/")
        u = urlparse(self.base_url)
        if u.scheme != "https" or not u.hostname:
            raise TransportError(f"server URL must be https://HOST:PORT (got {self.base_url!r})")
        self.host, self.port = u.hostname, u.port or 443
        self.ssl = bundle.client_ssl_context()
        self.timeout, self.give_up_s, self.backoff_s = timeout, give_up_s, backoff_s
        self._rng = np.random.default_rng(np.random.SeedSequence([seed, 0xBAC0FF]))
        self.http = httpx.Client(base_url=self.base_url, verify=self.ssl, timeout=httpx.Timeout(timeout, connect=10.0))

    def close(self) -> None:
        self.http.close()

    # -- requests -------------------------------------------------------------------------------
    def call(self, method: str, path: str, *, json: Any = None, content: bytes | None = None,
             params: dict[str, Any] | None = None, timeout: float | None = None, retry: bool = True) -> httpx.Response:
        """One request, retried across outages; raises ApiError for 4xx, CertificateRejected, ServerUntrusted."""
        start = time.monotonic()
        attempt = 0
        while True:
            try:
                kw: dict[str, Any] = {"json": json, "params": params}
                if content is not None:
                    kw = {"content": content, "params": params, "headers": {"content-type": "application/octet-stream"}}
                if timeout is not None:
                    kw["timeout"] = httpx.Timeout(timeout, connect=10.0)
                r = self.http.request(method, path, **kw)
            except (httpx.TransportError, ssl.SSLError, OSError) as exc:
                self._diagnose(exc)
                why = f"{type(exc).__name__}: {exc}"
            else:
                if r.status_code < 400:
                    return r
                code, detail = _error_of(r)
                if code == "certificate_revoked":
                    raise CertificateRejected(f"certificate rejected by the server at {self.base_url}: {detail}")
                if r.status_code < 500:
                    raise ApiError(r.status_code, code, detail)
                why = f"server error {r.status_code}: {detail}"
            if not retry:
                raise TransportError(f"{method} {path} failed: {why}")
            attempt += 1
            waited = time.monotonic() - start
            if waited > self.give_up_s:
                raise TransportError(f"the server at {self.base_url} has been unreachable for {waited:.0f}s "
                                     f"(last error: {why}); giving up")
            delay = min(self.backoff_s[1], self.backoff_s[0] * 2 ** min(attempt - 1, 20)) * (0.5 + self._rng.random())
            log.info("%s %s failed (%s); retrying in %.1fs", method, path, why, delay)
            time.sleep(delay)

    def json(self, method: str, path: str, **kw: Any) -> Any:
        return self.call(method, path, **kw).json()

    # -- TLS diagnosis --------------------------------------------------------------------------
    def _diagnose(self, exc: BaseException) -> None:
        chain = _cause_chain(exc)
        if any(isinstance(e, ssl.SSLCertVerificationError) for e in chain):
            raise ServerUntrusted(
                f"the server at {self.base_url} presented a certificate that the CA in the site bundle does not "
                f"trust ({exc}); check the server URL, or ask the operator for a bundle from this federation's CA") from None
        if any(isinstance(e, ConnectionRefusedError) for e in chain) or "refused" in str(exc).lower():
            return  # the server is down or restarting: retry
        if self._probe() == "rejected" and self._probe() == "rejected":
            raise CertificateRejected(
                f"certificate rejected by the server at {self.base_url}: the TLS handshake completes but the server "
                "closes the connection without an answer. The site certificate is revoked, expired, not yet valid, "
                "or issued by another CA; ask the federation operator for a new site bundle") from None

    def _probe(self) -> str:
        """'ok', 'down' or 'rejected', from one raw TLS connection and a tiny request."""
        try:
            raw = socket.create_connection((self.host, self.port), timeout=10)
        except OSError:
            return "down"
        try:
            with self.ssl.wrap_socket(raw, server_hostname=self.host) as s:
                s.sendall(f"GET /v1/ping HTTP/1.1\r\nHost: {self.host}\r\nConnection: close\r\n\r\n".encode())
                data = s.recv(16)
                return "ok" if data.startswith(b"HTTP/") else "rejected"
        except ssl.SSLCertVerificationError:
            raise ServerUntrusted(f"the server at {self.base_url} is not signed by the bundle's CA") from None
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return "rejected"
        except OSError:
            return "down"
        finally:
            raw.close()


def _error_of(r: httpx.Response) -> tuple[str, str]:
    try:
        body = r.json()
        return str(body.get("error", "error")), str(body.get("detail", body))
    except Exception:
        return "error", r.text[:300]
