"""iceformer's tests: they mirror the packages; shared helpers are in tests.support."""
