"""``websocket.send``: one message to a WebSocket endpoint per job.

Payload (the envelope's ``payload``; on a pool bound to this handler, the body as JSON)::

    {"url": "wss://push.example/socket",   # ws or wss, required
     "message": "hello",                   # a string is sent as it is; anything else as JSON
     "subprotocol": "push.v1",             # optional: the server must accept it
     "timeout": 10}                        # seconds for connecting, and for the close
                                           # (the whole exchange: at most 3 times that)

It connects (trio-websocket), sends the message as one text frame, then closes the
connection and waits for the server's close frame in return: the closing handshake, after
which the server has read everything sent before it. The exchange is reported to flow
control as a call to the API the URL's host belongs to (``job.api(host=...)``: an
``[api.NAME]`` whose ``hosts`` match, else one named after the host), so an endpoint that
keeps failing opens that API's breaker like an HTTP API would; a refusal (a bury) is the
caller's fault, not a failure.

==========================================================  ===============================
what happened                                               the job
==========================================================  ===============================
the closing handshake completed                             done (deleted)
cannot connect (refused, unreachable, DNS, TLS, timed        retried with backoff (a failed
out), handshake answered 408, 429 or 5xx, the server         call of the API)
closed with any other code (1001 going away, 1011 error,
1013 try later, 1006 dropped, ...), no close in time
handshake answered with another status (a 4xx, a            buried, with the reason
redirect, not a WebSocket endpoint); the subprotocol
refused; closed with 1002, 1003, 1007, 1008, 1009, 1010
(the message or the request is at fault)
a payload that is not one of the above                      buried at once
==========================================================  ===============================

Only calls that could have told something about the endpoint count as failures; a
burial's exchange is reported as a completed call.

Known limitation (trio-websocket 0.12.2): when a handshake is rejected or never answered,
trio-websocket does not close the TCP connection it opened; it is closed when the garbage
collector frees it (Python warns with a ``ResourceWarning``, which is silent by default).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias
from urllib.parse import urlsplit

import trio
import trio_websocket

from tubeworker import Bury, Job, Retry, handler

__all__ = ["send"]

_KEYS: Final = ("url", "message", "subprotocol", "timeout")
_DEFAULT_TIMEOUT: Final = 10.0
# Close codes that say the message or the request was wrong: sending it again will not help.
_CALLER_FAULTS: Final = frozenset({1002, 1003, 1007, 1008, 1009, 1010})
_NORMAL: Final = frozenset({1000, 1005})  # 1005: closed without a code
# Connecting, sending and closing: each phase has ``timeout``; the whole, this many.
_EXCHANGE_TIMEOUTS: Final = 3


@dataclass(frozen=True, slots=True)
class _Message:
    url: str
    host: str
    text: str
    subprotocol: str | None
    timeout: float

    @property
    def where(self) -> str:
        """The endpoint for reasons: no query string, no credentials."""
        parts = urlsplit(self.url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


class _Unavailable(Exception):
    """The endpoint failed (a failed call of its API): the job is retried."""


class _Refused(Exception):
    """The endpoint answered that the message is wrong (the caller's fault, not a failure
    of the API): the job is buried."""


@handler()
async def send(job: Job) -> None:
    """Send the payload's message; see the module's docstring."""
    message = _parse(_payload(job))
    refused = lambda exc: isinstance(exc, _Refused)  # noqa: E731 - one line, used once
    try:
        # The API the host belongs to ([api.NAME] hosts), as for job.http's requests; an
        # exception inside is a failure of it, but a refusal is an answer.
        with job.api(host=message.host, caller_fault=refused):
            verdict, words = await _exchange(message)
            if verdict == "retry":
                raise _Unavailable(words)
            if verdict == "bury":
                raise _Refused(words)
    except _Unavailable as exc:
        raise Retry(reason=f"{message.where}: {exc}") from None
    except _Refused as exc:
        raise Bury(f"{message.where}: {exc}") from None


_Verdict: TypeAlias = tuple[Literal["done", "retry", "bury"], str]


@dataclass
class _Progress:
    phase: str = "the handshake"


async def _exchange(message: _Message) -> _Verdict:
    """Connect, send, close: done; retry (the endpoint failed); bury (the caller's fault).

    The whole exchange is bounded too: trio-websocket 0.12 raises its handshake timeout
    only once its reader task ends, which a server that never answers never lets happen.
    Verdicts are returned, not raised from ``except`` blocks, so that no exception keeps
    trio-websocket's connection alive: on a rejected or timed-out handshake it leaves its
    TCP stream unclosed, for the garbage collector.
    """
    progress = _Progress()
    limit = _EXCHANGE_TIMEOUTS * message.timeout
    with trio.move_on_after(limit):
        return await _connect_and_send(message, progress)
    return "retry", f"no answer within {limit:g} s (waiting for {progress.phase})"


async def _connect_and_send(message: _Message, progress: _Progress) -> _Verdict:
    subprotocols = [message.subprotocol] if message.subprotocol else None
    try:
        async with trio_websocket.open_websocket_url(
            message.url,
            subprotocols=subprotocols,
            connect_timeout=message.timeout,
            disconnect_timeout=message.timeout,
        ) as ws:
            if message.subprotocol is not None and ws.subprotocol != message.subprotocol:
                progress.phase = "the close"
                return "bury", f"the server did not accept subprotocol {message.subprotocol!r}"
            progress.phase = "the message to be sent"
            await ws.send_message(message.text)
            progress.phase = "the close"
        # Left the block: our close frame went out and the server's came back (or the
        # server had closed first, with its own code).
        return _judge_close(ws.closed, sent=True)
    except trio_websocket.ConnectionRejected as exc:
        status = exc.status_code
        if status in (408, 429) or status >= 500:
            return "retry", f"handshake answered HTTP {status}"
        return "bury", f"handshake answered HTTP {status} (not a WebSocket endpoint that takes it)"
    except trio_websocket.ConnectionTimeout:
        return "retry", f"no handshake within {message.timeout:g} s"
    except trio_websocket.DisconnectionTimeout:
        return "retry", f"the server did not close within {message.timeout:g} s"
    except trio_websocket.HandshakeError as exc:  # refused, unreachable, DNS, TLS
        return "retry", f"cannot connect: {_describe(exc.__cause__ or exc)}"
    except trio_websocket.ConnectionClosed as exc:  # closed before the message went out
        return _judge_close(exc.reason, sent=False)


def _judge_close(reason: trio_websocket.CloseReason | None, *, sent: bool) -> _Verdict:
    if reason is None:
        return "retry", "the connection closed"
    words = f"closed with {reason.code} ({reason.name})" + (
        f": {reason.reason}" if reason.reason else ""
    )
    if reason.code in _CALLER_FAULTS:
        return "bury", words
    if sent and reason.code in _NORMAL:
        return "done", words
    return "retry", words if sent else f"{words} before the message was sent"


def _describe(exc: BaseException) -> str:
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


# --------------------------------------------------------------------------- the payload


def _payload(job: Job) -> Any:
    if job.task is not None:
        return job.payload
    try:
        return job.json()
    except ValueError:
        raise Bury(
            "websocket.send: the body is not JSON (a pool bound to it reads it as the payload)"
        ) from None


def _parse(data: Any) -> _Message:
    """The message a payload asks to send, or Bury saying what is wrong with it."""
    if not isinstance(data, dict):
        raise Bury(f"websocket.send: payload must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise Bury(f"websocket.send: unknown key {unknown[0]!r} (known: {', '.join(_KEYS)})")
    url, host = _url(data.get("url"))
    if "message" not in data:
        raise Bury('websocket.send: payload has no "message"')
    text = data["message"]
    if not isinstance(text, str):
        try:
            text = json.dumps(text, separators=(",", ":"), allow_nan=False)
        except ValueError as exc:
            raise Bury(f'websocket.send: "message" cannot be sent as JSON: {exc}') from None
    subprotocol = data.get("subprotocol")
    if subprotocol is not None and (not isinstance(subprotocol, str) or not subprotocol):
        raise Bury(f'websocket.send: "subprotocol" must be a non-empty string, got {subprotocol!r}')
    timeout = data.get("timeout", _DEFAULT_TIMEOUT)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not (math.isfinite(timeout) and timeout > 0)
    ):
        raise Bury(f'websocket.send: "timeout" must be a number of seconds > 0, got {timeout!r}')
    return _Message(url, host, text, subprotocol, float(timeout))


def _url(value: Any) -> tuple[str, str]:
    if value is None:
        raise Bury('websocket.send: payload has no "url"')
    if not isinstance(value, str):
        raise Bury(f'websocket.send: "url" must be a string, got {type(value).__name__}')
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError as exc:
        raise Bury(f"websocket.send: invalid url: {exc}") from None
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise Bury(f"websocket.send: url must be ws:// or wss:// with a host, got {value!r}")
    return value, parts.hostname
