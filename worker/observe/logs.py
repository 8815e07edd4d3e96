"""Logging setup: structlog, JSON or console, one write per event-loop turn."""

from __future__ import annotations

import logging
import sys
import threading
from typing import Literal, TextIO

import structlog
import trio

__all__ = ["LineBuffer", "configure_logging", "line_buffer"]


class LineBuffer:
    """A structlog logger that writes the lines of one event-loop turn in one syscall.

    Under load every finished job is a line; a write() each was the largest single cost
    of the job path. The daemon installs ``flush_instrument()``, which writes what was
    collected just before Trio waits for I/O, so a line waits less than one loop turn.
    Lines from other threads (the stall detector speaks while the loop is blocked) and
    lines logged outside a running loop are written at once.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lines: list[str] = []
        self._loop_thread: int | None = None  # set while the instrument is installed
        self._lock = threading.Lock()

    def msg(self, message: str) -> None:
        if threading.get_ident() != self._loop_thread:
            with self._lock:
                self._stream.write(message + "\n")
                self._stream.flush()
            return
        self._lines.append(message)
        if len(self._lines) >= 1000:
            self.flush()

    log = debug = info = warn = warning = error = err = critical = exception = fatal = msg

    def flush(self) -> None:
        if self._lines:
            lines, self._lines = self._lines, []
            with self._lock:
                self._stream.write("\n".join(lines) + "\n")
                self._stream.flush()

    def flush_instrument(self) -> trio.abc.Instrument:
        """Install with ``trio.lowlevel.add_instrument``; remove (and flush) when done."""
        buffer = self

        class _FlushBeforeIOWait(trio.abc.Instrument):
            def before_io_wait(self, timeout: float) -> None:
                buffer.flush()

        return _FlushBeforeIOWait()

    def bind_to_this_thread(self, enabled: bool) -> None:
        self.flush()
        self._loop_thread = threading.get_ident() if enabled else None


_buffer: LineBuffer | None = None


def line_buffer() -> LineBuffer | None:
    """The buffer ``configure_logging(batched=True)`` installed, if any."""
    return _buffer


def configure_logging(
    fmt: Literal["auto", "json", "console"] = "auto",
    level: str = "info",
    *,
    stream: TextIO | None = None,
    batched: bool = False,
) -> None:
    """structlog to ``stream`` (stdout): JSON lines, or the console renderer on a TTY.

    ``batched``: lines go through a :class:`LineBuffer` (the daemon flushes it).
    """
    global _buffer
    stream = stream or sys.stdout
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    buffer = _buffer = LineBuffer(stream) if batched else None
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
        logger_factory=(
            (lambda *args: buffer) if buffer is not None else structlog.WriteLoggerFactory(stream)
        ),
        cache_logger_on_first_use=True,
    )
