"""The package layout: files the service finds relative to its own modules."""

from __future__ import annotations

from server.ops.config import Config


def test_the_default_static_dir_holds_the_page() -> None:
    # server/ops/config.py names server/static/: moving a module must not lose the page
    assert (Config().static_dir / "index.html").is_file()
    assert (Config().static_dir / "app.js").is_file()
