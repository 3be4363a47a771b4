"""fedblend.net: real deployments. One server (`fedblend server`) and one site agent per
institution (`fedblend site`), mutual TLS, sites connect outbound only. See docs/deploy.md.

| module | what |
|---|---|
| ``identity`` | site names, the one-file site bundle, identities from verified certificates |
| ``ca`` | the federation's certificate authority: init, issue bundles, revoke |
| ``tls`` | uvicorn protocol classes that put the client certificate in each request's scope |
| ``wire`` | every control message as a pydantic model; errors and their HTTP codes |
| ``codec`` | streaming safetensors writer, strict reader, ``DiskWeights``, chunk digests |
| ``spool`` | the server's disk spool: published models, uploads in flight, kept models |
| ``fleet``, ``answers``, ``pool`` | the ``DeploymentPool`` SitePool: sessions, tasks, fault rules |
| ``coordinator`` | the server's driver: the Federation round loop, resume, cycles |
| ``server`` | the FastAPI app and uvicorn with mutual TLS |
| ``client``, ``agent`` | the site's HTTPS client (backoff, TLS diagnosis) and agent |

Importing this package loads nothing heavy; each name loads its module on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "CertificateAuthority": "fedblend.net.ca",
    "SiteBundle": "fedblend.net.identity",
    "load_bundle": "fedblend.net.identity",
    "DeploySpec": "fedblend.net.config",
    "parse_deploy": "fedblend.net.config",
    "DeploymentPool": "fedblend.net.pool",
    "Coordinator": "fedblend.net.coordinator",
    "create_app": "fedblend.net.server",
    "serve": "fedblend.net.server",
    "SiteAgent": "fedblend.net.agent",
    "LocalSite": "fedblend.net.agent",
    "FleetClient": "fedblend.net.client",
    "DiskWeights": "fedblend.net.codec",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fedblend.net' has no attribute {name!r}")
