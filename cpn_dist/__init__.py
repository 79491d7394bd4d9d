"""cpn-dist: the Complementary Patch Network (Zhang et al., ICCV 2021) for weakly supervised
semantic segmentation, trained from one CPU to many GPUs."""

# The one place of the version (pyproject.toml reads it from here): a literal, so `cpn --version`
# needs no package metadata look-up.
__version__ = "0.1.0"

__all__ = ["__version__"]
