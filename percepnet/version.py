"""The installed distribution's version, for --version of both console scripts."""

from __future__ import annotations


def package_version() -> str:
    """The installed distribution's version (pyproject.toml's), for --version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("percepnet")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"
