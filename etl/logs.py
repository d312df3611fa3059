"""Logging: readable text by default, one JSON object per line with ETL_LOG_FORMAT=json;
INFO and up unless ETL_LOG_LEVEL says otherwise (debug adds the daemon's line per
source and slot loaded)."""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime

from etl.errors import ConfigError

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def setup(level: int | None = None) -> None:
    if level is None:
        name = os.environ.get("ETL_LOG_LEVEL", "info").strip().lower()
        if name not in LEVELS:
            raise ConfigError(f"ETL_LOG_LEVEL={name!r}: expected one of {', '.join(LEVELS)}")
        level = LEVELS[name]
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("ETL_LOG_FORMAT", "text").lower() == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in (
        "httpx",
        "httpcore",
        "alembic.runtime.migration",
        "uvicorn",
        "uvicorn.error",
        "uvicorn.access",
        "pgserver",
        "apscheduler",
        "alembic",
        "matplotlib",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)
