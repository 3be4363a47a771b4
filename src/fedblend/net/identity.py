"""Who is speaking: site names, the one-file site bundle, and identities read from certificates.

A *site bundle* is one JSON file with the site's name, the server URL, the CA certificate, and the
site's own certificate and private key (the admin bundle also holds the admin token). A site's
identity is the common name of its certificate (organizational unit ``site``); the server never
trusts a name sent in a request body, and ``load_bundle`` refuses a bundle whose stated name is
not its certificate's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from fedblend.errors import ConfigError

__all__ = [
    "SiteBundle",
    "Identity",
    "load_bundle",
    "check_site_name",
    "identity_from_peercert",
    "hash_token",
    "norm_serial",
    "SITE_ROLE",
    "ADMIN_ROLE",
]

SITE_ROLE = "site"
ADMIN_ROLE = "admin"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_RESERVED = {"admin", "server", "ca"}
BUNDLE_FORMAT = "fedblend-site-bundle"


def check_site_name(name: str) -> str:
    """A site name: 1-64 characters of letters, digits, ``_ . -``, starting with a letter or digit."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(
            f"site name must be 1-64 characters of letters, digits, '_', '.' or '-', starting with a letter "
            f"or digit (got {name!r})"
        )
    if name.lower() in _RESERVED:
        raise ConfigError(f"site name {name!r} is reserved; pick another name (reserved: {sorted(_RESERVED)})")
    return name


def norm_serial(serial: str | int) -> str:
    """A certificate serial as upper-case hex without leading zeros (``getpeercert()`` pads to whole
    bytes, so ``0A1B`` and ``A1B`` are the same serial)."""
    return format(serial if isinstance(serial, int) else int(str(serial), 16), "X")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# -- bundles ----------------------------------------------------------------------------------------


class SiteBundle(BaseModel):
    """What a site (or the admin) needs to speak to the server; one file, kept private."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    format: Literal["fedblend-site-bundle"] = BUNDLE_FORMAT
    version: Literal[1] = 1
    site: str
    role: Literal["site", "admin"] = SITE_ROLE
    server_url: str
    ca_cert: str
    cert: str
    key: str
    admin_token: str | None = None

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(p.suffix + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(self.model_dump_json(indent=1, exclude_none=True))
        os.replace(tmp, p)
        return p

    def client_ssl_context(self) -> ssl.SSLContext:
        """TLS client context: trusts only this project's CA and presents this bundle's certificate."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=self.ca_cert)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        _load_chain(ctx, self.cert, self.key)
        return ctx

    def cert_subject(self) -> tuple[str, str]:
        """(common name, organizational unit) of this bundle's certificate."""
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        cert = x509.load_pem_x509_certificate(self.cert.encode())
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        ou = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
        return (str(cn[0].value) if cn else "", str(ou[0].value) if ou else "")

    def not_after(self) -> dt.datetime:
        from cryptography import x509

        return x509.load_pem_x509_certificate(self.cert.encode()).not_valid_after_utc


def _load_chain(ctx: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    """``ssl`` reads keys from files only: write them to a private temporary directory and load."""
    with tempfile.TemporaryDirectory(prefix="fedblend-tls-") as d:
        cp, kp = Path(d) / "cert.pem", Path(d) / "key.pem"
        for p, text in ((cp, cert_pem), (kp, key_pem)):
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(text)
        ctx.load_cert_chain(cp, kp)


def load_bundle(path: str | Path) -> SiteBundle:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"site bundle not found: {p} (create one with `fedblend ca add-site NAME`)")
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not a fedblend site bundle (not valid JSON: {exc})") from None
    try:
        bundle = SiteBundle.model_validate(raw)
        name, role = bundle.cert_subject()
    except ValidationError as exc:
        probs = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{p}: not a valid fedblend site bundle ({probs}); re-issue it with `fedblend ca add-site`") from None
    except ValueError as exc:
        raise ConfigError(f"{p}: the bundle's certificate cannot be read ({exc}); re-issue it with `fedblend ca add-site`") from None
    if (name, role) != (bundle.site, bundle.role):
        raise ConfigError(f"{p}: the bundle says it is {bundle.role} {bundle.site!r} but its certificate is for {role} {name!r}; "
                          "a site's identity is its certificate (tampered or mixed-up bundle): use the bundle issued to you")
    return bundle


# -- identity ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """Who a verified client certificate belongs to."""

    name: str
    role: str
    serial: str  # upper-case hex without leading zeros (``norm_serial``)

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN_ROLE


def identity_from_peercert(cert: dict[str, Any] | None) -> Identity | None:
    """The identity in a certificate dict from ``SSLObject.getpeercert()`` (verified by TLS)."""
    if not cert:
        return None
    fields: dict[str, str] = {}
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            fields.setdefault(key, value)
    name, role = fields.get("commonName"), fields.get("organizationalUnitName")
    try:
        serial = norm_serial(str(cert.get("serialNumber", "")))
    except ValueError:
        return None
    if not name or role not in (SITE_ROLE, ADMIN_ROLE):
        return None
    return Identity(name=name, role=role, serial=serial)
