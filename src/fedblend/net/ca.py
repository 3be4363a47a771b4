"""The project's certificate authority: enrollment, site bundles, revocation, the admin credential.

A CA directory holds::

    ca.key  ca.pem            the authority (ca.key never leaves this directory)
    server.key  server.pem    the server's TLS certificate (SANs: localhost, 127.0.0.1, --host ...)
    admin.bundle              the admin's bundle: client certificate + admin token (keep it private)
    admin.token.sha256        what the server checks the admin token against
    issued.json               every certificate issued: name, role, serial, validity
    revoked.json  crl.pem     revoked serials (the server reads revoked.json; crl.pem is for other tools)
    ca.json                   settings (project name, default server URL)

Site bundles and identities are in ``net.identity``; this module issues and revokes them.

    fedblend ca init --dir ca --server-url https://fl.example.org:8443
    fedblend ca add-site cleveland --dir ca          # writes ca/sites/cleveland.bundle
    fedblend ca revoke cleveland --dir ca
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import secrets
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from fedblend.errors import ConfigError
from fedblend.net.identity import ADMIN_ROLE, SITE_ROLE, SiteBundle, check_site_name, hash_token, norm_serial

__all__ = ["CertificateAuthority", "RevocationList", "read_revoked", "add_revoked"]

# -- revocation -------------------------------------------------------------------------------------


class RevocationList:
    """Revoked serials in ``revoked.json`` files, re-read when a file changes."""

    def __init__(self, paths: Iterable[str | Path]) -> None:
        self.paths = [Path(p) for p in paths]
        self._stamp: tuple[Any, ...] = ()
        self._serials: dict[str, dict[str, Any]] = {}
        self._checked = 0.0

    def _current_stamp(self) -> tuple[Any, ...]:
        out = []
        for p in self.paths:
            try:
                st = p.stat()
                out.append((str(p), st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                out.append((str(p), None, None))
        return tuple(out)

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < 0.5:
            return
        self._checked = now
        stamp = self._current_stamp()
        if stamp == self._stamp:
            return
        serials: dict[str, dict[str, Any]] = {}
        for p in self.paths:
            serials.update(read_revoked(p))
        self._serials, self._stamp = serials, stamp

    def is_revoked(self, serial: str) -> bool:
        self.refresh()
        try:
            return norm_serial(serial) in self._serials
        except ValueError:
            return True  # not a serial at all: refuse

    def entries(self) -> dict[str, dict[str, Any]]:
        self.refresh(force=True)
        return dict(self._serials)


def read_revoked(path: Path) -> dict[str, dict[str, Any]]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {norm_serial(str(k)): dict(v) for k, v in data.get("serials", {}).items()}
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: revocation list is not valid JSON ({exc}); restore it from a backup") from None


def add_revoked(path: Path, serials: dict[str, dict[str, Any]]) -> None:
    current = read_revoked(path)
    current.update({norm_serial(k): v for k, v in serials.items()})
    _write_json(path, {"serials": current})


def _write_json(path: Path, data: Any, mode: int = 0o644) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


# -- the authority ----------------------------------------------------------------------------------


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class CertificateAuthority:
    """A CA directory; ``CertificateAuthority.init(dir, server_url=...)`` creates one."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        if not (self.dir / "ca.pem").is_file() or not (self.dir / "ca.json").is_file():
            raise ConfigError(f"{self.dir} is not a fedblend CA directory (no ca.pem/ca.json); create one with `fedblend ca init --dir {self.dir}`")
        self.settings: dict[str, Any] = json.loads((self.dir / "ca.json").read_text(encoding="utf-8"))

    # paths the server reads (never ca.key)
    @property
    def ca_cert_path(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def server_cert_path(self) -> Path:
        return self.dir / "server.pem"

    @property
    def server_key_path(self) -> Path:
        return self.dir / "server.key"

    @property
    def revoked_path(self) -> Path:
        return self.dir / "revoked.json"

    @property
    def admin_token_hash(self) -> str:
        return (self.dir / "admin.token.sha256").read_text(encoding="ascii").strip()

    @property
    def server_url(self) -> str:
        return str(self.settings["server_url"])

    @classmethod
    def init(
        cls,
        directory: str | Path,
        *,
        server_url: str,
        hosts: Sequence[str] = (),
        name: str = "fedblend",
        days: int = 3650,
        force: bool = False,
    ) -> CertificateAuthority:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import NameOID

        d = Path(directory)
        if (d / "ca.key").exists() and not force:
            raise ConfigError(f"{d} already holds a CA (ca.key exists); pass --force to replace it (every issued bundle stops working)")
        url = _check_url(server_url)
        d.mkdir(parents=True, exist_ok=True)
        key = _new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA"),
                             x509.NameAttribute(NameOID.ORGANIZATION_NAME, name)])
        now = _utcnow()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_secret(d / "ca.key", _key_pem(key))
        (d / "ca.pem").write_text(_cert_pem(cert), encoding="ascii")
        _write_json(d / "ca.json", {"name": name, "server_url": url})
        _write_json(d / "issued.json", {"certificates": []})
        _write_json(d / "revoked.json", {"serials": {}})
        ca = cls(d)
        host = urlparse(url).hostname or "localhost"
        all_hosts = list(dict.fromkeys(["localhost", "127.0.0.1", "::1", host, *hosts]))
        skey, scert = ca._issue(name="server", role="server", days=days, hosts=all_hosts)
        _write_secret(d / "server.key", _key_pem(skey))
        (d / "server.pem").write_text(_cert_pem(scert), encoding="ascii")
        token = secrets.token_urlsafe(32)
        (d / "admin.token.sha256").write_text(hash_token(token) + "\n", encoding="ascii")
        akey, acert = ca._issue(name="admin", role=ADMIN_ROLE, days=days)
        SiteBundle(site="admin", role=ADMIN_ROLE, server_url=url, ca_cert=_cert_pem(cert), cert=_cert_pem(acert),
                   key=_key_pem(akey), admin_token=token).save(d / "admin.bundle")
        ca._write_crl()
        return ca

    def issue_site(
        self,
        name: str,
        *,
        server_url: str | None = None,
        days: float = 365,
        out: str | Path | None = None,
        not_before: dt.datetime | None = None,
    ) -> Path:
        """Issue a certificate for site ``name`` and write its bundle; returns the bundle's path."""
        check_site_name(name)
        url = _check_url(server_url or self.server_url)
        key, cert = self._issue(name=name, role=SITE_ROLE, days=days, not_before=not_before)
        bundle = SiteBundle(site=name, server_url=url, ca_cert=self.ca_cert_path.read_text(encoding="ascii"),
                            cert=_cert_pem(cert), key=_key_pem(key))
        return bundle.save(Path(out) if out is not None else self.dir / "sites" / f"{name}.bundle")

    def issued(self) -> list[dict[str, Any]]:
        return list(json.loads((self.dir / "issued.json").read_text(encoding="utf-8"))["certificates"])

    def revoke(self, name: str, reason: str = "") -> list[str]:
        """Revoke every certificate issued to ``name``; returns the revoked serials."""
        serials = [c["serial"] for c in self.issued() if c["name"] == name and c["role"] in (SITE_ROLE, ADMIN_ROLE)]
        if not serials:
            known = sorted({c["name"] for c in self.issued() if c["role"] == SITE_ROLE})
            raise ConfigError(f"no certificate was issued to {name!r} by this CA; issued sites: {known}")
        now = time.time()
        add_revoked(self.revoked_path, {s: {"site": name, "at": now, "reason": reason} for s in serials})
        self._write_crl()
        return serials

    # -- internals ------------------------------------------------------------------------------
    def _ca(self) -> tuple[Any, Any]:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        key_path = self.dir / "ca.key"
        if not key_path.is_file():
            raise ConfigError(f"{key_path} is missing: issuing and revoking need the CA key (run this on the CA machine)")
        key = load_pem_private_key(key_path.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(self.ca_cert_path.read_bytes())
        return key, cert

    def _issue(self, *, name: str, role: str, days: float, hosts: Sequence[str] = (),
               not_before: dt.datetime | None = None) -> tuple[Any, Any]:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        ca_key, ca_cert = self._ca()
        key = _new_key()
        start = not_before if not_before is not None else _utcnow() - dt.timedelta(minutes=5)
        end = start + dt.timedelta(days=days)
        serial = x509.random_serial_number()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                             x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                             x509.NameAttribute(NameOID.ORGANIZATION_NAME, str(self.settings.get("name", "fedblend")))])
        usage = ExtendedKeyUsageOID.SERVER_AUTH if role == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
        b = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(serial).not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        if hosts:
            names: list[x509.GeneralName] = []
            for h in hosts:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(h)))
                except ValueError:
                    names.append(x509.DNSName(h))
            b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = b.sign(ca_key, hashes.SHA256())
        entries = self.issued() if (self.dir / "issued.json").exists() else []
        entries.append({"name": name, "role": role, "serial": f"{serial:X}", "not_before": start.isoformat(),
                        "not_after": end.isoformat(), "issued_at": time.time()})
        _write_json(self.dir / "issued.json", {"certificates": entries})
        return key, cert

    def _write_crl(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization

        ca_key, ca_cert = self._ca()
        now = _utcnow()
        b = x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject).last_update(now).next_update(
            now + dt.timedelta(days=30))
        for serial, info in read_revoked(self.revoked_path).items():
            rc = (x509.RevokedCertificateBuilder().serial_number(int(serial, 16))
                  .revocation_date(dt.datetime.fromtimestamp(float(info.get("at", time.time())), dt.UTC)).build())
            b = b.add_revoked_certificate(rc)
        crl = b.sign(ca_key, hashes.SHA256())
        (self.dir / "crl.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))


def _check_url(url: str) -> str:
    u = urlparse(url)
    if u.scheme != "https" or not u.hostname:
        raise ConfigError(f"server URL must look like https://HOST:PORT (got {url!r}); sites only speak HTTPS")
    return url.rstrip("/")


def _new_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode("ascii")


def _cert_pem(cert: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(text)
