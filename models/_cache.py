"""Where exported models, converted weights and fetched text are cached (same rule as the C++ build)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    root = os.environ.get("ICEFORMER_CACHE_DIR")
    if root:
        base = Path(root)
    elif os.environ.get("XDG_CACHE_HOME"):
        base = Path(os.environ["XDG_CACHE_HOME"]) / "iceformer"
    else:
        base = Path.home() / ".cache" / "iceformer"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
