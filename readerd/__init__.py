"""readerd: the card reader daemon for municipal kiosks."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("readerd")
except PackageNotFoundError:  # pragma: no cover - running from a tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
