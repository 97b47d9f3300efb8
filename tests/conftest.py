"""Test tiers and shared fixtures (helpers live in the tests.support package).

`python -m pytest` runs the fast tier: everything not marked with one of FULL_TIER_MARKERS. `--full` (what the
README's test command and CI run) adds those tests; `-m EXPR` chooses by marker expression instead of either tier.
"""

import pytest

# Markers of the full tier only (registered with their meaning in pyproject.toml).
FULL_TIER_MARKERS = ("slow", "models", "exports", "corpus", "genai", "ray", "cross", "sanitizer")


def pytest_addoption(parser):
    parser.addoption(
        "--full",
        action="store_true",
        help="run the full suite (real models, exports, the corpus, genai, Ray, emulated CPUs, sanitizers), as CI does",
    )


def pytest_configure(config):
    # The full tier lists its slowest tests (CI has 90 minutes; the list says which to look at first).
    if config.getoption("--full") and config.option.durations is None:
        config.option.durations = 25


def pytest_collection_modifyitems(config, items):
    if config.getoption("--full") or config.option.markexpr:
        return
    fast, deselected = [], []
    for item in items:
        (deselected if any(item.get_closest_marker(m) for m in FULL_TIER_MARKERS) else fast).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = fast


def pytest_report_header(config):
    if config.getoption("--full") or config.option.markexpr:
        return None
    return f"fast tier: tests marked {', '.join(FULL_TIER_MARKERS)} are deselected (--full runs them)"


@pytest.fixture
def tmp_stats(tmp_path, monkeypatch):
    path = tmp_path / "stats.jsonl"
    monkeypatch.setenv("ICEFORMER_STATS", str(path))
    return path
