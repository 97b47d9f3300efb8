"""The README is a short guide whose links reach every page of docs/; no link or cited path dangles, and nothing
points outside the project."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# A repository path cited in prose or code: docs/..., tests/..., ops/..., tools/... with a file extension.
CITED = re.compile(r"(?<![\w/.])((?:docs|tests|ops|tools|rewriter|models|batch)/[\w./{},*-]+\.[a-z]{1,5}\b)")
CODE_FILES = ("*.py", "*.cc", "*.h", "*.md", "*.txt", "*.cmake", "*.sh", "*.toml")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but '-' and '_' dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def test_readme_is_short():
    assert len(README.read_text().splitlines()) <= 250


def test_readme_links_every_docs_page():
    linked = {(README.parent / m.split("#")[0]).resolve() for m in LINK.findall(README.read_text())}
    assert [p.name for p in PAGES if p.resolve() not in linked] == []


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: p.name)
def test_links_resolve(page):
    """Every relative link names an existing file, and its #anchor a heading of that file."""
    bad = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            bad.append(f"{target}: no file {file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            bad.append(f"{target}: no heading with anchor #{anchor} in {file.name}")
    assert bad == []


def _expand(path: str) -> list[str]:
    """docs/results/x.{json,md} -> both names."""
    m = re.search(r"\{([^}]*)\}", path)
    return [path[: m.start()] + alt + path[m.end() :] for alt in m.group(1).split(",")] if m else [path]


def test_cited_paths_exist():
    """Paths the docs and the code cite (docs/..., tests/..., ops/...) exist in the repository."""
    files = [p for pat in CODE_FILES for p in ROOT.rglob(pat) if not {"build", ".git"} & set(p.relative_to(ROOT).parts)]
    missing = set()
    for f in files:
        for cited in CITED.findall(f.read_text(errors="replace")):
            for path in _expand(cited.rstrip(".,")):
                if "*" not in path and not (ROOT / path).exists():
                    missing.add(f"{f.relative_to(ROOT)}: {path}")
    assert sorted(missing) == []


def test_nothing_points_outside_the_project():
    files = [p for pat in CODE_FILES for p in ROOT.rglob(pat) if not {"build", ".git"} & set(p.relative_to(ROOT).parts)]
    outside_dir = "../" + "shared"  # the workspace beside the checkout (split so this file does not match itself)
    outside = [str(f.relative_to(ROOT)) for f in files if outside_dir in f.read_text(errors="replace")]
    assert outside == []
