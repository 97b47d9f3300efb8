"""Command-line tools only (benchmarks, accuracy evaluation, capture, calibration, fuzzing); their shared metrics live in
iceformer.metrics."""

__all__: list[str] = []
