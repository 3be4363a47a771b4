"""`fedblend server`: run a job for real, with one `fedblend site` agent per institution; and
`fedblend admin ...`: status, stop, start and revoke on a running server.

    fedblend server --job examples/heart_deploy.toml --state runs/heart-deploy --ca ca --port 8443

With a [tune] table in the job, the server runs the search instead: trials one after another on
the connected sites (fedblend.hpo.deployed), the study in --state as `fedblend tune` keeps it.

The server runs the same Federation round loop as `fedblend simulate`, over the deployment pool,
with its state in the run store under --state. Started again on the same --state, it resumes after
the last committed round. The model's shape comes from the first site that registers (the server
holds no data); the initial weights come from the job's seed, as in simulation.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer

from fedblend.cli.common import console, err_console, fmt
from fedblend.errors import ConfigError


def _open_state(job: Any, state: Path, fresh: bool) -> Any:
    from fedblend.runner import open_store
    from fedblend.store import SqlRunStore

    resume = False
    if (state / "run.db").exists() and not fresh:
        st = SqlRunStore(state, create=False)
        doc = st.document("job.toml")
        st.close()
        if doc is not None and doc != job.to_toml():
            raise ConfigError(f"{state} holds the state of another job (its job.toml differs from this one); "
                              "pass --fresh to start over there, or give another --state directory")
        resume = True
    return open_store(job, run_dir=state, resume=resume, overwrite=fresh)


def _dashboard_app(state: Path, offline_after_s: float) -> Any | None:
    """The dashboard over the run store, when ``fedblend.dashboard`` provides ``create_app``."""
    import importlib
    import inspect

    try:
        mod = importlib.import_module("fedblend.dashboard")
    except ImportError:
        return None
    factory = getattr(mod, "create_app", None)
    if factory is None:
        return None
    kwargs: dict[str, Any] = {}
    try:
        if "offline_after_s" in inspect.signature(factory).parameters:
            kwargs["offline_after_s"] = offline_after_s
        return factory(state, **kwargs)  # its own store connection; access is guarded by the admin certificate
    except Exception as exc:  # the dashboard is optional; the fleet must run without it
        err_console.print(f"dashboard not mounted: {type(exc).__name__}: {exc}")
        return None


def run_server(job_path: Path, state: Path, ca_dir: Path, *, host: str, port: int, sets: list[str], fresh: bool,
               ready_file: Path | None, dashboard: bool, quiet: bool) -> int:
    from fedblend.cli.simulate import load_with_overrides
    from fedblend.net.ca import CertificateAuthority, RevocationList, add_revoked
    from fedblend.net.config import parse_deploy
    from fedblend.net.coordinator import Coordinator
    from fedblend.net.pool import DeploymentPool
    from fedblend.net.server import create_app, serve, tune_malloc
    from fedblend.net.wire import Schema
    from fedblend.runner import build_federation, shape_prepared

    tune_malloc()
    job = load_with_overrides(job_path, sets)
    spec = parse_deploy(job.deploy, source=str(job_path))
    ca = CertificateAuthority(ca_dir)
    search = None
    if job.tune is not None:  # a [tune] table: a search whose trials run on the sites
        from fedblend.hpo.deployed import open_search
        from fedblend.store import SqlRunStore

        tspec, url, storage, study = open_search(job, state, fresh=fresh, source=str(job_path))
        store = SqlRunStore(state)
    else:
        store = _open_state(job, state, fresh)
    meta = store.meta()
    schema = Schema.model_validate(meta["deploy_schema"]) if meta.get("deploy_schema") else None
    pool = DeploymentPool(spec, spool_dir=state / "spool", job_toml=job.to_toml(), store=store, schema=schema,
                          on_schema=lambda s: store.set_meta(deploy_schema=s.model_dump()))

    def make_federation(total: int) -> Any:
        assert pool.schema is not None
        return build_federation(job.with_overrides(rounds=total), shape_prepared(job, pool.schema), pool, store)

    if job.tune is not None:
        from fedblend.hpo.deployed import DeployedSearch

        search = DeployedSearch(job, tspec, pool, spec, state=state, url=url, storage=storage, study=study, store=store)
    coord: Any = search if search is not None else Coordinator(pool, store, make_federation, spec=spec, rounds=job.rounds)

    def revoke(site: str, reason: str) -> list[str]:
        serials = [c["serial"] for c in ca.issued() if c["name"] == site and c["role"] == "site"]
        if not serials:
            raise ConfigError(f"no certificate was issued to {site!r} by this CA")
        add_revoked(ca.revoked_path, {s: {"site": site, "at": time.time(), "reason": reason or "revoked by admin"} for s in serials})
        return serials

    mounts = {}
    if dashboard and (dash := _dashboard_app(state, spec.offline_after_s)) is not None:
        mounts["/dashboard"] = dash
    app = create_app(pool, revocations=RevocationList([ca.revoked_path]), admin_token_hash=ca.admin_token_hash,
                     coordinator=coord, revoke=revoke, mounts=mounts)
    linger = {"since": None}

    def until() -> bool:
        if not coord.finished.is_set():
            return False
        if linger["since"] is None:
            linger["since"] = time.monotonic()
        return pool.all_told_done() or time.monotonic() - linger["since"] >= spec.linger_s

    def started(bound: int) -> None:
        if not quiet:
            what = f"search of {job.name}" if search is not None else job.name
            console.print(f"fedblend server for [bold]{what}[/] on https://{host}:{bound} (state in {state}); "
                          f"waiting for {spec.start_count()} site(s)")
        if ready_file is not None:
            tmp = ready_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"port": bound, "server_id": pool.server_id}))
            tmp.replace(ready_file)

    coord.start()
    try:
        serve(app, host=host, port=port, cert=str(ca.server_cert_path), key=str(ca.server_key_path), ca=str(ca.ca_cert_path),
              on_started=started, until=until)
    finally:
        coord.shutdown()  # closes the pool
        if not coord.completed and coord.error is None:
            store.set_status("interrupted")
        rounds = store.rounds()
        store.close()
    if coord.error is not None:
        err_console.print(f"[bold red]error:[/] {coord.error}")
        return 1
    if search is not None:
        if not quiet and search.outcome is not None:
            from fedblend.cli.tune import show_outcome

            show_outcome(search.outcome)
        return 0
    if not quiet and rounds:
        gm = rounds[-1]["global_metrics"]
        console.print(f"finished round {rounds[-1]['round']}: " + "  ".join(f"{k}={fmt(v)}" for k, v in gm.items()))
    return 0


def _admin_call(bundle_path: Path, server: str | None, method: str, path: str, body: Any = None) -> Any:
    from fedblend.net.client import FleetClient
    from fedblend.net.identity import load_bundle

    bundle = load_bundle(bundle_path)
    if bundle.role != "admin" or not bundle.admin_token:
        raise ConfigError(f"{bundle_path} is not the admin bundle (use the admin.bundle that `fedblend ca init` wrote)")
    client = FleetClient(bundle, server, give_up_s=10)
    try:
        client.http.headers["authorization"] = f"Bearer {bundle.admin_token}"
        return client.json(method, path, json=body)
    finally:
        client.close()


def register(app: typer.Typer) -> None:
    @app.command()
    def server(
        job_path: Path = typer.Option(..., "--job", help="job file (TOML) with an optional [deploy] table ([tune]: run a search)"),
        state: Path = typer.Option(..., "--state", help="state directory: the run store (resumed when it exists)"),
        ca_dir: Path = typer.Option(Path("ca"), "--ca", help="CA directory (server.pem, server.key, ca.pem, revoked.json)"),
        host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (0.0.0.0 for all)"),
        port: int = typer.Option(8443, "--port", help="port to listen on (0: any free port, see --ready-file)"),
        sets: list[str] = typer.Option([], "--set", help="override any job key, e.g. --set deploy.quorum=2"),
        fresh: bool = typer.Option(False, "--fresh", help="discard the state directory's run and start over"),
        ready_file: Path | None = typer.Option(None, "--ready-file", help="write {port, server_id} as JSON here once listening"),
        dashboard: bool = typer.Option(True, "--dashboard/--no-dashboard", help="serve the dashboard at /dashboard (admin certificate)"),
        quiet: bool = typer.Option(False, "--quiet", "-q"),
    ) -> None:
        """Run a federated job for real: sites connect with `fedblend site`."""
        raise typer.Exit(run_server(job_path, state, ca_dir, host=host, port=port, sets=sets, fresh=fresh,
                                    ready_file=ready_file, dashboard=dashboard, quiet=quiet))

    admin_app = typer.Typer(help="Control a running server (needs the admin bundle).", no_args_is_help=True)
    app.add_typer(admin_app, name="admin")
    bundle_opt = typer.Option(Path("ca/admin.bundle"), "--bundle", help="the admin bundle from `fedblend ca init`")
    server_opt = typer.Option(None, "--server", help="server URL (default: the bundle's)")

    @admin_app.command("status")
    def status(bundle: Path = bundle_opt, server_url: str | None = server_opt) -> None:
        """The job's status and every site's state."""
        st = _admin_call(bundle, server_url, "GET", "/admin/status")
        console.print(f"{st['status']}: round {st['round']}/{st['rounds']} (cycle {st['cycle']})")
        for s in st["sites"]:
            console.print(f"  {s['site']:<20} {s['state']:<10} data {s['data_version'] or '-'}  rows {s['num_rows']}")

    @admin_app.command("stop")
    def stop(bundle: Path = bundle_opt, server_url: str | None = server_opt) -> None:
        """Stop the job after the current round."""
        console.print(_admin_call(bundle, server_url, "POST", "/admin/actions", {"action": "stop"})["detail"])

    @admin_app.command("start")
    def start(bundle: Path = bundle_opt, server_url: str | None = server_opt) -> None:
        """Resume a stopped job, or start a new cycle now."""
        console.print(_admin_call(bundle, server_url, "POST", "/admin/actions", {"action": "start"})["detail"])

    @admin_app.command("revoke")
    def revoke(site: str = typer.Argument(...), reason: str = typer.Option("", "--reason"),
               bundle: Path = bundle_opt, server_url: str | None = server_opt) -> None:
        """Revoke a site's certificate on the running server (and in the CA's revocation list)."""
        console.print(_admin_call(bundle, server_url, "POST", "/admin/actions", {"action": "revoke", "site": site, "reason": reason})["detail"])
