"""Regenerates the contract tables of docs/contract.md from iceformer.ops.contract (python -m iceformer.tools.docs)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..ops import contract

BLOCKS = {"contract": False, "gqa-contract": True}  # marker in docs/contract.md -> contract.markdown(gqa=...)


def render(readme: str) -> str:
    for name, gqa in BLOCKS.items():
        begin, end = f"<!-- {name}:begin -->\n", f"<!-- {name}:end -->\n"
        head, rest = readme.split(begin, 1)
        _, tail = rest.split(end, 1)
        readme = head + begin + contract.markdown(gqa=gqa) + end + tail
    return readme


def main(argv: list[str] | None = None) -> None:
    path = Path(argv[0] if argv else (sys.argv[1] if len(sys.argv) > 1 else "docs/contract.md"))
    path.write_text(render(path.read_text()))


if __name__ == "__main__":
    main()
