"""Type stubs of the extension module ``lore._lore`` (checked by mypy's stubtest in the tests)."""

__all__ = ["__version__"]

__version__: str
