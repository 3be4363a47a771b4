"""`fedblend` command line: one module per command group, registered here.

Every FedblendError becomes a one-paragraph message on stderr and exit code 2; nothing else is
caught, so a bug still shows its traceback.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import typer

from fedblend.errors import FedblendError

app = typer.Typer(
    name="fedblend",
    help="Federated learning that blends the sites' models in the best ratio it can find.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module has `register(app)`; add a line here for a new command module.
COMMAND_MODULES = [
    "fedblend.cli.simulate",
    "fedblend.cli.runs",
    "fedblend.cli.data",
    "fedblend.cli.dashboard",
    "fedblend.cli.tune",
    "fedblend.cli.ca",
    "fedblend.cli.server",
    "fedblend.cli.site",
]

for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


@app.callback()
def _main(verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="-v info, -vv debug logs")) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main(argv: list[str] | None = None) -> Any:
    """Run the CLI; usage errors exit 2 (click), FedblendErrors exit 2 with a one-paragraph message."""
    try:
        return app(args=argv, standalone_mode=True)
    except FedblendError as exc:
        from rich.markup import escape

        from fedblend.cli.common import err_console

        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        raise SystemExit(2) from None


def _entry() -> None:
    main()
