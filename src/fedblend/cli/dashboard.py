"""`fedblend dashboard RUN_DIR`: serve the live dashboard of one run (a simulation's run directory).

The dashboard reads only the run store, so it may start before the run (it waits for run.db)
and keeps showing a finished run. It listens on 127.0.0.1 by default and has no login: to show
it to others, serve it through `fedblend server`, which puts it behind viewer and admin tokens.
"""

from __future__ import annotations

import socket
from pathlib import Path

import typer

from fedblend.cli.common import console
from fedblend.errors import ConfigError


def register(app: typer.Typer) -> None:
    @app.command()
    def dashboard(
        run: Path = typer.Argument(..., help="run directory (the one holding run.db; it may not exist yet)"),
        host: str = typer.Option("127.0.0.1", "--host", help="interface to listen on (default: this machine only)"),
        port: int = typer.Option(8050, "--port", help="TCP port (0: any free port)"),
        poll: float = typer.Option(0.5, "--poll", help="seconds between checks of the run store for live updates"),
    ) -> None:
        """Serve the live dashboard of a run: sites, rounds, blends, data and search."""
        import uvicorn

        from fedblend.dashboard import create_app

        if not 0 <= port <= 65535:
            raise ConfigError(f"--port must be in 0..65535 (got {port})")
        if run.exists() and not run.is_dir():
            raise ConfigError(f"{run} is a file; pass a run directory (e.g. runs/heart-fedavg)")
        if not (run / "run.db").exists():
            console.print(f"[yellow]{run}/run.db does not exist yet[/]: the dashboard will fill in when the run starts")
        if host not in ("127.0.0.1", "localhost", "::1"):
            console.print(
                f"[yellow]warning:[/] listening on {host}: this dashboard has no login; anyone who can reach "
                "the port can read the run"
            )
        application = create_app(run, poll_interval_s=poll)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise ConfigError(
                f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port (0: any free one)"
            ) from None
        sock.listen(128)  # connections queue from now on, so the printed URL works at once
        bound = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        console.print(f"dashboard of {run} at [bold]http://{shown}:{bound}/[/]  (Ctrl-C to stop)")
        config = uvicorn.Config(application, log_level="warning", timeout_graceful_shutdown=2)
        uvicorn.Server(config).run(sockets=[sock])
