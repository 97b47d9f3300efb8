"""Command-line tools: benchmarks, demo and accuracy evaluation."""

__all__: list[str] = []
