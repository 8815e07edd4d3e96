"""Logging setup and the process's job counters. Imports nothing else of ours.

Every layer may emit into this; the control plane and ``tubeworker demo`` read the counters.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal, TextIO

import structlog

__all__ = ["JobCounters", "configure_logging"]


def configure_logging(
    fmt: Literal["auto", "json", "console"] = "auto",
    level: str = "info",
    *,
    stream: TextIO | None = None,
) -> None:
    """structlog to ``stream`` (stdout): JSON lines, or the console renderer on a TTY."""
    stream = stream or sys.stdout
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )


@dataclass
class JobCounters:
    """What happened to jobs in this process, by outcome (plain ints: the hot path is cheap)."""

    reserved: int = 0
    deleted: int = 0
    released: int = 0
    buried: int = 0
    returned: int = 0  # connection closed with the job: drain deadline, lost connection
    in_flight: int = 0
    by_tube: Counter[tuple[str, str]] = field(default_factory=Counter)

    @property
    def finished(self) -> int:
        return self.deleted + self.released + self.buried + self.returned

    def summary(self) -> str:
        return (
            f"done {self.deleted}, retried {self.released}, buried {self.buried}, "
            f"returned {self.returned}"
        )
