"""An httpx transport that reports every request to the API tracker.

``TrackingTransport`` wraps another transport (by default ``httpx.AsyncHTTPTransport()``)
and reports each exchange under ``tracker.api_for_host(request.url.host)``:

=======================================================  ================
what happened                                            reported as
=======================================================  ================
2xx, 3xx                                                 SUCCESS
408, 429, 5xx; any ``httpx.TransportError`` (connect,    FAILURE
read and write errors, every timeout, a broken proxy or
a reply that is not HTTP)
other 4xx; ``httpx.UnsupportedProtocol`` and             CALLER_FAULT
``httpx.LocalProtocolError`` (the request was wrong)
=======================================================  ================

An exchange is reported once, when its response body has been read or closed: a server
that sends its headers and then stalls the body until the client's read timeout is a
FAILURE, not a success. Transport errors are re-raised after they are reported; responses
are returned whatever their status (raising for status stays the caller's choice).
Cancellation reports nothing.

``Retry-After`` on a failure (429 and 503 use it) is parsed in both of its forms,
delta-seconds and HTTP-date (the latter against an injected wall clock, since a date is
wall-clock time while the tracker runs on a monotonic clock), clamped to
[0, ``retry_after_ceiling``], and garbage is ignored.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import httpx

from tubeworker.backoff import RETRY_AFTER_CEILING, parse_retry_after
from tubeworker.flow.breaker import CallOutcome
from tubeworker.flow.tracker import ApiTracker, TrackedCall

__all__ = [
    "RETRY_AFTER_CEILING",
    "TrackingTransport",
    "outcome_of_status",
    "parse_retry_after",
]

# An hour: longer is more likely a misconfigured server than a plan, and an API that is
# still limited after it answers the next probe with another Retry-After.


# The request never left (or was never valid): nothing about the API can be learnt from it.
_CALLER_ERRORS = (httpx.UnsupportedProtocol, httpx.LocalProtocolError)


def outcome_of_status(status_code: int) -> CallOutcome:
    """How a response status counts for the API's breaker."""
    if status_code in (408, 429) or status_code >= 500:
        return CallOutcome.FAILURE
    if status_code >= 400:
        return CallOutcome.CALLER_FAULT
    return CallOutcome.SUCCESS


class TrackingTransport(httpx.AsyncBaseTransport):
    """Reports every request made through it to ``tracker`` (see the module docstring)."""

    def __init__(
        self,
        tracker: ApiTracker,
        inner: httpx.AsyncBaseTransport | None = None,
        *,
        wall_clock: Callable[[], float] = time.time,
        retry_after_ceiling: float = RETRY_AFTER_CEILING,
    ) -> None:
        self._tracker = tracker
        self._inner = inner if inner is not None else httpx.AsyncHTTPTransport()
        self._wall_clock = wall_clock
        self._retry_after_ceiling = retry_after_ceiling

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        call = self._tracker.call(self._tracker.api_for_host(request.url.host))
        try:
            response = await self._inner.handle_async_request(request)
        except _CALLER_ERRORS:
            call.finish(CallOutcome.CALLER_FAULT)
            raise
        except httpx.TransportError:
            call.finish(CallOutcome.FAILURE)
            raise
        stream = response.stream
        if not isinstance(stream, httpx.AsyncByteStream):
            raise TypeError(f"{self._inner!r} returned a response without an async stream")
        outcome = outcome_of_status(response.status_code)
        retry_after = None
        header = response.headers.get("retry-after")
        if outcome is CallOutcome.FAILURE and header is not None:
            retry_after = parse_retry_after(
                header, self._wall_clock(), ceiling=self._retry_after_ceiling
            )
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_ReportingStream(stream, call, outcome, retry_after),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


class _ReportingStream(httpx.AsyncByteStream):
    """A response body that reports its exchange once it is read, closed or broken."""

    def __init__(
        self,
        inner: httpx.AsyncByteStream,
        call: TrackedCall,
        outcome: CallOutcome,
        retry_after: float | None,
    ) -> None:
        self._inner = inner
        self._call = call
        self._outcome = outcome
        self._retry_after = retry_after

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except httpx.TransportError:
            # A body cut short is the API's failure whatever the status said; a failure
            # status keeps its Retry-After.
            self._call.finish(CallOutcome.FAILURE, retry_after=self._retry_after)
            raise
        self._finish()

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._finish()

    def _finish(self) -> None:
        self._call.finish(self._outcome, retry_after=self._retry_after)
