"""Mutual TLS on the server side: the verified client certificate reaches every request.

uvicorn verifies client certificates (``ssl_cert_reqs=CERT_REQUIRED``) but does not hand the
peer certificate to the application. The protocol classes here (passed as uvicorn's ``http=``)
read ``transport.get_extra_info("ssl_object").getpeercert()`` when a connection is made and put it
in the ASGI scope of each request on that connection, as ``scope["extensions"]["tls"]``
(``client_cert_name`` and the certificate dict as ``peer_cert``). ``identity_of(scope)`` turns it
into an ``Identity``; the site name comes from there and nowhere else.
"""

from __future__ import annotations

import ssl
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from fedblend.net.identity import Identity, identity_from_peercert

__all__ = ["PeerCertH11Protocol", "peer_cert_protocol", "identity_of", "server_ssl_settings"]


def _wrap_app(app: Any, tls: dict[str, Any]) -> Any:
    async def with_peer_cert(scope: dict[str, Any], receive: Any, send: Any) -> None:
        ext = dict(scope.get("extensions") or {})
        ext["tls"] = tls
        scope["extensions"] = ext
        await app(scope, receive, send)

    return with_peer_cert


def _tls_info(transport: Any) -> dict[str, Any]:
    obj = transport.get_extra_info("ssl_object")
    cert = obj.getpeercert() if obj is not None else None
    ident = identity_from_peercert(cert)
    return {
        "peer_cert": cert,
        "client_cert_name": ident.name if ident else None,
        "client_cert_error": None if cert else "no client certificate",
        "tls_version": obj.version() if obj is not None else None,
    }


class PeerCertH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, with the verified peer certificate in each request's scope."""

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.app = _wrap_app(self.config.loaded_app, _tls_info(transport))


def peer_cert_protocol() -> type:
    """The fastest available uvicorn HTTP protocol class, extended with the peer certificate."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools is optional in uvicorn
        return PeerCertH11Protocol

    class PeerCertHttpToolsProtocol(HttpToolsProtocol):
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.app = _wrap_app(self.config.loaded_app, _tls_info(transport))

    return PeerCertHttpToolsProtocol


def identity_of(scope: dict[str, Any]) -> Identity | None:
    tls = (scope.get("extensions") or {}).get("tls") or {}
    return identity_from_peercert(tls.get("peer_cert"))


def server_ssl_settings(cert: str, key: str, ca: str) -> dict[str, Any]:
    """uvicorn.Config keyword arguments for mutual TLS."""
    return {
        "ssl_certfile": cert,
        "ssl_keyfile": key,
        "ssl_ca_certs": ca,
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
    }
