"""The installed deepfactor version, for ``--version``, heartbeats and reports."""

from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    """The version pip installed, or "unknown" when run from a tree that was never installed."""
    try:
        return version("deepfactor")
    except PackageNotFoundError:
        return "unknown"


VERSION = package_version()
