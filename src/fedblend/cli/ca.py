"""`fedblend ca ...`: the project's certificate authority (enrollment, bundles, revocation).

    fedblend ca init --dir ca --server-url https://fl.example.org:8443
    fedblend ca add-site cleveland --dir ca        # -> ca/sites/cleveland.bundle (give it to the site)
    fedblend ca revoke cleveland --dir ca          # the running server refuses it from now on
    fedblend ca list --dir ca
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from fedblend.cli.common import console


def register(app: typer.Typer) -> None:
    ca_app = typer.Typer(help="Certificate authority: enroll sites, issue bundles, revoke them.", no_args_is_help=True)
    app.add_typer(ca_app, name="ca")
    dir_opt = typer.Option(Path("ca"), "--dir", help="CA directory")

    @ca_app.command("init")
    def init(
        directory: Path = dir_opt,
        server_url: str = typer.Option(..., "--server-url", help="https://HOST:PORT the sites will connect to"),
        host: list[str] = typer.Option([], "--host", help="extra host name or IP for the server certificate (repeatable)"),
        name: str = typer.Option("fedblend", "--name", help="federation name (in every certificate)"),
        days: int = typer.Option(3650, "--days", help="validity of the CA and server certificates"),
        force: bool = typer.Option(False, "--force", help="replace an existing CA (every issued bundle stops working)"),
    ) -> None:
        """Create the CA, the server certificate and the admin bundle."""
        from fedblend.net.ca import CertificateAuthority

        ca = CertificateAuthority.init(directory, server_url=server_url, hosts=host, name=name, days=days, force=force)
        console.print(f"CA created in [bold]{ca.dir}[/] for {ca.server_url}")
        console.print(f"  server certificate: {ca.server_cert_path} (+ server.key)")
        console.print(f"  admin bundle:       {ca.dir / 'admin.bundle'} (keep it private)")
        console.print(f"next: fedblend ca add-site NAME --dir {directory}")

    @ca_app.command("add-site")
    def add_site(
        name: str = typer.Argument(..., help="the site's name; it becomes its identity"),
        directory: Path = dir_opt,
        server_url: str | None = typer.Option(None, "--server-url", help="override the CA's server URL in this bundle"),
        days: float = typer.Option(365, "--days", help="certificate validity in days"),
        out: Path | None = typer.Option(None, "--out", help="bundle file (default: DIR/sites/NAME.bundle)"),
    ) -> None:
        """Issue a site certificate inside a one-file site bundle."""
        from fedblend.net.ca import CertificateAuthority

        path = CertificateAuthority(directory).issue_site(name, server_url=server_url, days=days, out=out)
        console.print(f"site bundle for [bold]{name}[/]: {path}")
        console.print(f"copy it to the site over a private channel; there: fedblend site --bundle {path.name} --data DIR")

    @ca_app.command("revoke")
    def revoke(
        name: str = typer.Argument(..., help="site to revoke"),
        directory: Path = dir_opt,
        reason: str = typer.Option("", "--reason"),
    ) -> None:
        """Revoke every certificate of a site; a running server refuses it within a second."""
        from fedblend.net.ca import CertificateAuthority

        serials = CertificateAuthority(directory).revoke(name, reason)
        console.print(f"revoked {len(serials)} certificate(s) of [bold]{name}[/]: {', '.join(serials)}")

    @ca_app.command("list")
    def list_(directory: Path = dir_opt) -> None:
        """Certificates issued by this CA and whether they are revoked."""
        from fedblend.net.ca import CertificateAuthority, read_revoked

        ca = CertificateAuthority(directory)
        revoked = read_revoked(ca.revoked_path)
        table = Table(title=f"certificates of {ca.dir}", title_justify="left")
        for col in ("name", "role", "serial", "valid until", "revoked"):
            table.add_column(col)
        for c in ca.issued():
            table.add_row(c["name"], c["role"], c["serial"][:16] + "...", c["not_after"][:19], "yes" if c["serial"] in revoked else "")
        console.print(table)
