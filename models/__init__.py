"""Recipes exporting real pretrained models offline (not implemented yet)."""

__all__: list[str] = []
