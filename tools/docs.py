"""Regenerates the contract section of README.md from iceformer.ops.contract (python -m iceformer.tools.docs)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..ops import contract

BEGIN, END = "<!-- contract:begin -->\n", "<!-- contract:end -->\n"


def render(readme: str) -> str:
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + BEGIN + contract.markdown() + END + tail


def main(argv: list[str] | None = None) -> None:
    path = Path(argv[0] if argv else (sys.argv[1] if len(sys.argv) > 1 else "README.md"))
    path.write_text(render(path.read_text()))


if __name__ == "__main__":
    main()
