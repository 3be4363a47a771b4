"""``python -m fedblend`` runs the CLI."""

from fedblend.cli.main import _entry

_entry()
