"""The README's layers diagram, generated from the import-linter contract and package docstrings.

    python .ci/layers_diagram.py          # rewrite the block in README.md
    python .ci/layers_diagram.py --check  # exit 1 when README.md differs (make lint, tests)

The layers and their order come from `[importlinter:contract:layers]` in setup.cfg (what
`lint-imports` enforces), each line's words from the first line of the package's docstring, so
the picture cannot drift from the contract or the code.
"""

from __future__ import annotations

import ast
import configparser
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- layers:begin (.ci/layers_diagram.py) -->", "<!-- layers:end -->"


def layers(setup_cfg: Path = REPO / "setup.cfg") -> list[list[str]]:
    """The contract's layers, top first; each a list of sibling packages."""
    config = configparser.ConfigParser()
    config.read(setup_cfg)
    raw = config["importlinter:contract:layers"]["layers"]
    return [[p.strip() for p in line.split("|")] for line in raw.splitlines() if line.strip()]


def summary(package: str) -> str:
    """First line of the package's docstring, without its closing period."""
    tree = ast.parse((REPO / package / "__init__.py").read_text())
    doc = ast.get_docstring(tree) or ""
    return doc.splitlines()[0].rstrip(".") if doc else ""


def render() -> str:
    """The diagram block (markers included)."""
    lines = ["```text"]
    rows = layers()
    for i, siblings in enumerate(rows):
        if len(siblings) == 1:
            lines.append(f"{siblings[0] + '/':<15}{summary(siblings[0])}")
        else:
            lines.append("  |  ".join(f"{p}/" for p in siblings) + "   (none imports another)")
            lines.extend(f"  {p + '/':<13}{summary(p)}" for p in siblings)
        if i < len(rows) - 1:
            lines.append("   ▼")
    lines.append("```")
    return "\n".join([BEGIN, *lines, END])


def main(argv: list[str]) -> int:
    readme = REPO / "README.md"
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        print(f"README.md lacks the markers {BEGIN} ... {END}", file=sys.stderr)
        return 1
    head, rest = text.split(BEGIN, 1)
    new = head + render() + rest.split(END, 1)[1]
    if "--check" in argv:
        if new != text:
            print("README.md's layers diagram is out of date: python .ci/layers_diagram.py",
                  file=sys.stderr)
            return 1
        return 0
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
