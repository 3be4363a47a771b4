"""The public namespace is exactly the curated one, and `import fedblend` stays light."""

from __future__ import annotations

import subprocess
import sys

import fedblend


def test_exported_names_resolve() -> None:
    for name in fedblend.__all__:
        assert getattr(fedblend, name) is not None, name


def test_no_private_or_stray_exports() -> None:
    assert not [n for n in fedblend.__all__ if n.startswith("_") and n != "__version__"]
    assert len(set(fedblend.__all__)) == len(fedblend.__all__)


def test_import_is_light() -> None:
    code = (
        "import sys, fedblend; heavy = [m for m in ('torch', 'optuna', 'fastapi', 'ray', 'uvicorn', 'sqlalchemy') "
        "if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"import fedblend pulled in heavy modules: {out}"
