"""ftflow's library: typed recipes and one plain-Python function per pipeline stage. Never imports Prefect."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ftflow")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
