"""Session set-up shared by every test module."""

from __future__ import annotations

from percepnet.enhancer import warm_up


def pytest_sessionstart() -> None:
    """Compile (or load) the DSP kernels once, before any test runs.

    A cold compile takes tens of seconds on this machine; inside a service test it would
    block that test's event loop and eat its deadlines.
    """
    warm_up()
