"""Imports point down only (DESIGN.md): a module may import its own layer or lower ones."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "fedblend"

# layer of each top-level module/package; higher may import lower or equal, never the reverse
LAYERS: dict[str, int] = {
    "errors": 0, "weights": 0, "records": 0, "_lazy": 0,
    "data": 1, "task": 1, "strategies": 1,
    "blend": 2, "engine": 2,
    "sim": 3, "net": 3, "store": 3,
    "jobs": 4, "runner": 4, "hpo": 4, "learning": 4, "testing": 4,
    "dashboard": 5, "cli": 5, "__init__": 5, "__main__": 5,
}


def _top(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "fedblend":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
    return out


def test_every_module_has_a_layer() -> None:
    for path in PKG.iterdir():
        name = path.stem if path.suffix == ".py" else path.name
        if name.startswith("__pycache__") or (path.is_dir() and not (path / "__init__.py").exists() and not any(path.glob("*.py"))):
            continue
        if path.suffix == ".py" or path.is_dir():
            assert name in LAYERS, f"{name} has no layer in tests/test_layers.py; add it (and to DESIGN.md)"


def test_imports_point_down() -> None:
    bad = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG)
        me = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        for mod in _imports(path):
            other = _top(mod)
            if other is None or other == me:
                continue
            if LAYERS[other] > LAYERS[me] or (LAYERS[other] == LAYERS[me] and (me, other) in {("blend", "engine")}):
                bad.append(f"{rel} imports {mod} (layer {LAYERS[other]} > {LAYERS[me]})")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_the_deployment_server_stack_does_not_load_torch() -> None:
    # the server aggregates numpy arrays; torch would add ~150 MB to its resident memory
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import fedblend.net.server, fedblend.net.coordinator, fedblend.net.pool, fedblend.engine.federation\n"
        "import fedblend.store, fedblend.strategies, fedblend.blend\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout[:500]
