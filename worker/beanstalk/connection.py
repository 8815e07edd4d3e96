"""One beanstalkd connection's protocol state, sans I/O (in the style of h11 and wsproto).

Commands become bytes with :meth:`Connection.send`; bytes from the server go in with
:meth:`Connection.receive_data` and typed replies come out of :meth:`Connection.next_event`,
which returns :data:`NEED_DATA` until a whole reply is buffered. Nothing here opens a
socket, sleeps or logs.

Several commands may be sent before any reply is read (pipelining): beanstalkd answers
in order, and each reply is checked against the command it answers. A reply the command
cannot have, or bytes that do not parse, raise :class:`RemoteProtocolError` and poison the
connection: every later call raises it again. Arguments are validated before any state
changes, so a :class:`LocalProtocolError` leaves the connection usable.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable
from enum import Enum
from typing import Final

from tubeworker.beanstalk.commands import Command, Put, _Expect
from tubeworker.beanstalk.replies import (
    BadFormat,
    Buried,
    DeadlineSoon,
    Deleted,
    Draining,
    ExpectedCrlf,
    Found,
    Inserted,
    InternalError,
    JobTooBig,
    Kicked,
    NotFound,
    NotIgnored,
    OutOfMemory,
    Paused,
    Released,
    Reply,
    Reserved,
    TimedOut,
    Touched,
    UnknownCommand,
    Using,
    Watching,
    _parse_uint,
)
from tubeworker.errors import LocalProtocolError, RemoteProtocolError

__all__ = ["NEED_DATA", "Connection"]

# The longest reply line beanstalkd writes is short ("RESERVED <u64> <u32>"); anything much
# longer without a CRLF is garbage, not a slow reply.
_MAX_REPLY_LINE: Final = 256


class _NeedData(Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = _NeedData.NEED_DATA
"""Returned by :meth:`Connection.next_event` when no whole reply is buffered yet."""


# The tables reply lines are read with. Defined here, not imported from replies.py: a
# method called on an imported name compiles to LOAD_ATTR and a bound method instead of
# LOAD_METHOD (CPython 3.11 and later), and _BARE.get runs for every reply.

# No-field replies are immutable; share one instance of each.
_DEADLINE_SOON: Final = DeadlineSoon()
_TIMED_OUT: Final = TimedOut()
_DELETED: Final = Deleted()
_RELEASED: Final = Released()
_TOUCHED: Final = Touched()
_NOT_FOUND: Final = NotFound()
_NOT_IGNORED: Final = NotIgnored()
_PAUSED: Final = Paused()
_BURIED: Final = Buried()
_KICKED: Final = Kicked()

# Replies that are a bare word, and those of the form "WORD <uint>".
_BARE: Final[dict[bytes, Reply]] = {
    b"DELETED": _DELETED,
    b"RELEASED": _RELEASED,
    b"TOUCHED": _TOUCHED,
    b"NOT_FOUND": _NOT_FOUND,
    b"DEADLINE_SOON": _DEADLINE_SOON,
    b"TIMED_OUT": _TIMED_OUT,
    b"NOT_IGNORED": _NOT_IGNORED,
    b"PAUSED": _PAUSED,
    b"BURIED": _BURIED,
    b"KICKED": _KICKED,
    b"OUT_OF_MEMORY": OutOfMemory(),
    b"INTERNAL_ERROR": InternalError(),
    b"BAD_FORMAT": BadFormat(),
    b"UNKNOWN_COMMAND": UnknownCommand(),
    b"EXPECTED_CRLF": ExpectedCrlf(),
    b"JOB_TOO_BIG": JobTooBig(),
    b"DRAINING": Draining(),
}
_WITH_UINT: Final[dict[bytes, Callable[[int], Reply]]] = {
    b"INSERTED": Inserted,
    b"BURIED": Buried,
    b"WATCHING": Watching,
    b"KICKED": Kicked,
}
_WITH_BODY: Final = (b"RESERVED", b"FOUND", b"OK")


class _State(Enum):
    OPEN = "open"
    CLOSED = "closed"  # quit sent, or EOF received with nothing outstanding
    ERROR = "error"


class Connection:
    """One beanstalkd connection's protocol state: pending commands and the read buffer."""

    __slots__ = ("_buffer", "_eof", "_error", "_pending", "_state", "max_job_size")

    def __init__(self, *, max_job_size: int | None = None) -> None:
        self._buffer = bytearray()
        self._pending: collections.deque[_Expect] = collections.deque()
        self._state = _State.OPEN
        self._error: RemoteProtocolError | None = None
        self._eof = False
        #: When known (from ``stats``), bodies longer than this are refused before sending.
        self.max_job_size = max_job_size

    # ---- state

    @property
    def pending(self) -> int:
        """How many replies are still owed by the server."""
        return len(self._pending)

    @property
    def poisoned(self) -> bool:
        return self._state is _State.ERROR

    def _fail(self, message: str) -> RemoteProtocolError:
        self._state = _State.ERROR
        self._error = RemoteProtocolError(message)
        return self._error

    def _check_open(self) -> None:
        if self._state is _State.ERROR:
            assert self._error is not None
            raise RemoteProtocolError(f"connection is poisoned: {self._error}")
        if self._state is _State.CLOSED:
            raise LocalProtocolError("connection is closed (quit sent or EOF received)")

    # ---- sending

    def send(self, command: Command) -> bytes:
        """Validate ``command`` and return its bytes; its reply is now expected."""
        self._check_open()
        data = self._wire(command)
        self._commit(command)
        return data

    def send_many(self, commands: Iterable[Command]) -> bytes:
        """Validate every command, then return their bytes joined (one write).

        All or nothing: if one command is illegal, none is expected and nothing is returned.
        """
        self._check_open()
        datas: list[bytes] = []
        expects: list[_Expect] = []
        closing = False
        for command in commands:
            if closing:
                raise LocalProtocolError("quit must be the last command of a pipeline")
            datas.append(self._wire(command) if isinstance(command, Put) else command.wire())
            expect = command.expect
            if expect is None:
                closing = True
            else:
                expects.append(expect)
        self._pending.extend(expects)  # only now: all or nothing
        if closing:
            self._state = _State.CLOSED
        return b"".join(datas)

    def _wire(self, command: Command) -> bytes:
        data = command.wire()
        if (
            self.max_job_size is not None
            and isinstance(command, Put)
            and len(command.body) > self.max_job_size
        ):
            raise LocalProtocolError(
                f"body is {len(command.body)} bytes; the server's max-job-size is "
                f"{self.max_job_size}"
            )
        return data

    def _commit(self, command: Command) -> None:
        if command.expect is None:
            self._state = _State.CLOSED
        else:
            self._pending.append(command.expect)

    # ---- receiving

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed bytes read from the server; ``b""`` means the server closed its end."""
        if self._state is _State.ERROR:
            self._check_open()
        if data:
            if self._eof:
                raise self._fail("data received after EOF")
            self._buffer += data
        else:
            self._eof = True

    def next_event(self) -> Reply | _NeedData:
        """The next whole reply, or NEED_DATA. Raises RemoteProtocolError on garbage."""
        if self._state is _State.ERROR:
            self._check_open()
        try:
            return self._next_event()
        except RemoteProtocolError as exc:
            # One place poisons the connection, whatever part of the parser objected.
            if self._state is not _State.ERROR:
                self._state = _State.ERROR
                self._error = exc
            raise

    def _next_event(self) -> Reply | _NeedData:
        buf = self._buffer
        if not self._pending:
            if buf:
                raise self._fail(f"unsolicited data from server: {bytes(buf[:40])!r}")
            if self._eof:
                self._state = _State.CLOSED
            return NEED_DATA
        end = buf.find(b"\r\n", 0, _MAX_REPLY_LINE)
        if end < 0:
            if len(buf) >= _MAX_REPLY_LINE:
                raise self._fail(f"reply line too long: {bytes(buf[:40])!r}…")
            return self._need_data()
        line = bytes(buf[:end])
        reply = _BARE.get(line)
        if reply is not None:  # DELETED, TIMED_OUT, …: most replies, parsed by one lookup
            expect = self._pending[0]
            if type(reply) not in expect.replies:
                raise self._fail(f"{type(reply).__name__} is not a possible reply here")
            self._pending.popleft()
            del buf[: end + 2]
            return reply
        words = line.split(b" ")
        head = words[0]
        if head in _WITH_BODY:
            return self._body_reply(words, end)
        reply = self._line_reply(words)
        del buf[: end + 2]
        return self._accept(reply)

    def _need_data(self) -> _NeedData:
        if self._eof:
            raise self._fail(f"server closed the connection with {self.pending} replies owed")
        return NEED_DATA

    def _line_reply(self, words: list[bytes]) -> Reply:
        head = words[0]
        if len(words) == 1 and head in _BARE:
            return _BARE[head]
        if len(words) == 2:
            if head in _WITH_UINT:
                return _WITH_UINT[head](_parse_uint(words[1], head.decode()))
            if head == b"USING":
                try:
                    name = words[1].decode("ascii")
                except UnicodeDecodeError:
                    raise self._fail("USING with a non-ASCII tube name") from None
                return Using(name)
        raise self._fail(f"unknown reply: {b' '.join(words)[:80]!r}")

    def _body_header(self, words: list[bytes]) -> tuple[int, int]:
        """(job id, body size) of ``RESERVED <id> <n>``, ``FOUND <id> <n>`` or ``OK <n>``."""
        head = words[0]
        if head == b"OK":
            if len(words) != 2:
                raise RemoteProtocolError("OK takes one argument")
            return 0, _parse_uint(words[1], "OK size")
        if len(words) != 3:
            raise RemoteProtocolError(f"{head.decode()} takes two arguments")
        return _parse_uint(words[1], "job id"), _parse_uint(words[2], "body size")

    def _body_reply(self, words: list[bytes], end: int) -> Reply | _NeedData:
        head = words[0]
        if (
            len(words) == 3
            and head != b"OK"
            and words[1].isdigit()
            and words[2].isdigit()
            and len(words[1]) <= 20
            and len(words[2]) <= 20
        ):  # RESERVED <id> <n> well formed (per job: no call); else the header says why
            job_id, size = int(words[1]), int(words[2])
        else:
            job_id, size = self._body_header(words)
        start = end + 2
        stop = start + size
        buf = self._buffer
        if len(buf) < stop + 2:
            return self._need_data()
        if buf[stop : stop + 2] != b"\r\n":
            raise self._fail(f"{head.decode()} body of {size} bytes is not followed by CRLF")
        body = bytes(buf[start:stop])
        del buf[: stop + 2]
        expect = self._pending[0]
        reply: Reply
        if head == b"RESERVED":
            reply = Reserved(job_id, body)
        elif head == b"FOUND":
            reply = Found(job_id, body)
        elif expect.ok is None:
            raise self._fail("OK reply to a command that has no OK reply")
        else:
            reply = expect.ok(body)
        if type(reply) not in expect.replies:
            raise self._fail(f"{type(reply).__name__} is not a possible reply here")
        self._pending.popleft()
        return reply

    def _accept(self, reply: Reply) -> Reply:
        expect = self._pending[0]
        if type(reply) not in expect.replies:
            raise self._fail(f"{type(reply).__name__} is not a possible reply here")
        self._pending.popleft()
        return reply
