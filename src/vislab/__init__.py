"""vislab: curate, train, evaluate, explain and compare visual-recognition models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vislab")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__"]
