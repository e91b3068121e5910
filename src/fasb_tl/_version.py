"""The library version: from the installed package's metadata, else ``0+unknown``."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fasb-tl")
except PackageNotFoundError:
    __version__ = "0+unknown"
