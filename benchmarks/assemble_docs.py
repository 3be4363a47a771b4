"""Rebuild docs/benchmarks.md from the per-benchmark sections in docs/benchmarks/*.md.

python benchmarks/assemble_docs.py
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["flamby.md", "sim.md", "blend.md", "deploy.md", "tune.md"]

HEADER = """# Benchmarks

Every figure here was measured by a program in `benchmarks/`, with the command given beside it,
on the project's 2-core CPU machine unless a section says otherwise. Sections are kept in
`docs/benchmarks/` and joined by `python benchmarks/assemble_docs.py`.
"""


def main() -> None:
    parts = [HEADER]
    src = ROOT / "docs" / "benchmarks"
    names = [n for n in ORDER if (src / n).exists()]
    names += sorted(p.name for p in src.glob("*.md") if p.name not in ORDER and p.name != "README.md")
    for name in names:
        parts.append((src / name).read_text().strip() + "\n")
    (ROOT / "docs" / "benchmarks.md").write_text("\n".join(parts))
    print(f"docs/benchmarks.md: {len(names)} sections ({', '.join(names)})")


if __name__ == "__main__":
    main()
