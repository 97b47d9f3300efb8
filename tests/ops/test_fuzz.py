"""tools/fuzz.py: a CI-sized slice of seeded random op calls (every one the reference's output, a bounded output or
a clean ORT error; crashes and hangs caught in a child process), the regressions it found, and the fuzzer's own
machinery (drawing is deterministic, a planted failure is reported and shrunk)."""

import json
from dataclasses import asdict
from pathlib import Path

import pytest
from iceformer.tools import fuzz

REGRESSIONS = sorted((Path(__file__).parent / "fuzz_regressions").glob("*.json"))


@pytest.mark.parametrize("op,calls", [("knn", 300), ("gqa", 150)])
def test_fuzz_slice_has_no_failures(op, calls):
    failures = fuzz.run_cases(op, seed=2026, start=0, stop=calls, timeout=60)
    assert failures == {}, {i: (why, asdict(fuzz.draw(op, 2026, i))) for i, why in failures.items()}


@pytest.mark.parametrize("path", REGRESSIONS, ids=[p.stem for p in REGRESSIONS])
def test_regression_case(path):
    case = fuzz.Case(**json.loads(path.read_text())["case"])
    assert fuzz.run_case(case) is None


def test_drawing_is_seeded_and_covers_the_space():
    assert fuzz.draw("knn", 5, 17) == fuzz.draw("knn", 5, 17)
    cases = [fuzz.draw("knn", 0, i) for i in range(400)]
    assert {c.dims["S"] for c in cases} >= {0, 1}  # empty and single-query calls are drawn
    assert any(not c.valid for c in cases) and sum(c.valid for c in cases) > 300
    assert {c.extras["threads"] for c in cases} == {1, 2, 4}
    assert {c.extras["attn_mask"]["rank"] for c in cases if c.extras["attn_mask"]} == {1, 2, 3, 4}
    assert any("min_keys" in c.attrs for c in cases) and any("min_keys" not in c.attrs for c in cases)


def test_a_planted_failure_is_reported_and_shrunk():
    case = fuzz.Case(
        "knn",
        0,
        0,
        {"B": 2, "Hq": 4, "Hkv": 2, "S": 64, "T": 100, "D": 16, "Dv": 16},
        {"is_causal": 1},
        {"threads": 2, "attn_mask": None, "key_padding_mask": None, "special": "nan_q", "bad": None},
    )
    # "fails" while S > 3 and the NaN is planted: shrinking keeps the smallest such case
    small = fuzz.shrink(case, lambda c: c.dims["S"] > 3 and c.extras.get("special") == "nan_q")
    assert small.dims == {"B": 0, "Hq": 0, "Hkv": 0, "S": 4, "T": 0, "D": 0, "Dv": 0}  # zero sizes are valid draws
    assert small.extras["special"] == "nan_q" and small.extras["threads"] == 2
