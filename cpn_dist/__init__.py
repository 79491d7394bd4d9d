"""cpn-dist: the Complementary Patch Network (Zhang et al., ICCV 2021) for weakly supervised
semantic segmentation, trained from one CPU to many GPUs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cpn-dist")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
