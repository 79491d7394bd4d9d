"""Slow, literal reference implementations used only by the tests (never imported by the package)."""
