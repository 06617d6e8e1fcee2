"""Log set-up of the service: text lines or one JSON object per line."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

TEXT_LOG_FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"
CHATTY_LOGGERS = ("aioice",)
"""Libraries that log routine events at INFO (aioice: each candidate pair's state, about
nine lines a session); kept at WARNING unless the service logs at DEBUG."""


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: what log pipelines (Loki, Elasticsearch,
    Cloud Logging...) parse without a grok pattern. Newlines in messages and tracebacks
    are escaped by json.dumps, so a record never spans lines."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(level: str, fmt: str = "text") -> None:
    """Root handler on stderr at `level`, in `fmt` (text or json), replacing any other."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    numeric = logging.getLevelName(level.upper())
    root.setLevel(numeric)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(
            numeric if numeric <= logging.DEBUG else max(numeric, logging.WARNING)
        )
