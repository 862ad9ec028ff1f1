"""The installed distribution's version, as reports and `--version` show it."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cleanse")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"
