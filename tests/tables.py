"""Lake tables as rows two runs can be compared by (the fault and scale suites)."""

from __future__ import annotations


def comparable_rows(lake, table: str, ignored: set[str]) -> list[dict]:
    """`table`'s published rows, sorted, without the `ignored` columns (what a rerun stamps
    differently), image paths relative to the lake (each workdir has its own)."""
    data = lake.read_arrow(table)
    cols = [c for c in data.column_names if c not in ignored]
    rows = data.select(cols).to_pylist()
    root = f"{lake.root.resolve()}/"
    for r in rows:
        if isinstance(r.get("path"), str) and r["path"].startswith(root):
            r["path"] = r["path"][len(root) :]
    return sorted(rows, key=lambda r: tuple(str(r[c]) for c in cols))
