"""Logging setup: structlog, JSON or console, one write per event-loop turn; and the fast
path of the one line every job writes.

structlog is the logging API and its JSON renderer the format users parse. For the job
outcome line, written once per job, running structlog's processor chain (a dict per line,
contextvars merged, a datetime, ``json.dumps``) was a third of the daemon's CPU per job, so
:class:`JobLines` writes the very same JSON (same keys, same order, same separators) from a
prefix built once per lane, into the same per-turn buffer. It is used only where it gives
the same bytes: JSON logs, batched, as :func:`configure_logging` set them up; anywhere else
the line goes through structlog.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
import threading
import time
from collections.abc import Mapping
from typing import Literal, TextIO

import structlog
import trio

__all__ = ["JobLines", "LineBuffer", "configure_logging", "job_lines", "line_buffer"]


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
_level = logging.INFO  # the configured level (when a buffer is installed)
_fast_json = False  # JSON lines through the buffer: JobLines may write them
# The processors configure_logging installed: anyone who configures structlog since (an
# application, structlog.testing.capture_logs) turns the fast path off.
_installed: tuple[structlog.typing.Processor, ...] = ()


def line_buffer() -> LineBuffer | None:
    """The buffer ``configure_logging(batched=True)`` installed, if any."""
    return _buffer


class _Clock:
    """structlog's ISO timestamp (UTC, ``Z``, microseconds unless 0) from ``time.time()``,
    the date and time of day formatted once per second."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def stamp(self) -> str:
        micros = time.time_ns() // 1000
        second = micros // 1_000_000
        if second != self._second:
            moment = datetime.datetime.fromtimestamp(second, tz=datetime.UTC)
            self._second, self._prefix = second, moment.isoformat()[:19]
        micro = micros - second * 1_000_000
        # str(1_xxxxxx)[1:]: six digits, zero-padded, cheaper than a format spec.
        return f"{self._prefix}.{str(micro + 1_000_000)[1:]}Z" if micro else f"{self._prefix}Z"


_clock = _Clock()


class JobLines:
    """Writes a lane's job lines: ``{<its bound context>, <fields>, "event": ..., "level":
    ..., "timestamp": ...}``, exactly as structlog's JSON renderer would."""

    __slots__ = ("_buffer", "_heads", "_min", "_prefix", "_strings")

    def __init__(self, buffer: LineBuffer, context: Mapping[str, object], min_level: int) -> None:
        self._buffer = buffer
        self._min = min_level
        self._prefix = json.dumps(dict(context))[:-1] + (", " if context else "")
        self._strings: dict[str, str] = {}  # tube and handler names, as JSON strings
        self._heads: dict[tuple[str, str | None], str] = {}  # see tube_and_handler

    def string(self, text: str) -> str:
        """``text`` as a JSON string (names repeat: cached, bounded)."""
        found = self._strings.get(text)
        if found is None:
            found = json.dumps(text)
            if len(self._strings) < 10_000:
                self._strings[text] = found
        return found

    def tube_and_handler(self, tube: str, handler: str | None) -> str:
        """``"tube": ..., "handler": ..., `` (the pair repeats job after job: cached, bounded)."""
        key = tube, handler
        found = self._heads.get(key)
        if found is None:
            named = "null" if handler is None else self.string(handler)
            found = f'"tube": {self.string(tube)}, "handler": {named}, '
            if len(self._heads) < 10_000:
                self._heads[key] = found
        return found

    def write(self, level: int, fields: str, event: str) -> None:
        """``fields``: the line's own ``"key": value, `` pairs, JSON, each followed by
        ``, ``; ``event`` a JSON string."""
        if level < self._min:
            return
        name = "info" if level == logging.INFO else logging.getLevelName(level).lower()
        self._buffer.msg(
            f'{self._prefix}{fields}"event": {event}, "level": "{name}", '
            f'"timestamp": "{_clock.stamp()}"}}'
        )


def job_lines(log: structlog.typing.FilteringBoundLogger) -> JobLines | None:
    """The fast writer for ``log``'s job lines, when it writes what structlog would; else
    None (the caller logs through structlog)."""
    if _buffer is None or not _fast_json:
        return None
    if tuple(structlog.get_config()["processors"]) != _installed:
        return None
    context = structlog.get_context(log)
    return JobLines(_buffer, context, _level)


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
    global _buffer, _level, _fast_json, _installed
    stream = stream or sys.stdout
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    buffer = _buffer = LineBuffer(stream) if batched else None
    _level = logging.getLevelNamesMapping()[level.upper()]
    _fast_json = fmt == "json" and buffer is not None
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        renderer,
    ]
    _installed = tuple(processors)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=(
            (lambda *args: buffer) if buffer is not None else structlog.WriteLoggerFactory(stream)
        ),
        cache_logger_on_first_use=True,
    )
