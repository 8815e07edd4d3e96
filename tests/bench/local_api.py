"""A local HTTP API for the flow-control benchmarks: loopback only, plain threads, and it
writes down every request it answers (arrival time, status, target).

The scenarios switch it between up (200) and down (503) from the harness thread, and read
what reached it afterwards: the calls made while it was down (``outage``), or the highest
number of requests in any one-second window and the most answered at once (``limits``).

It runs in the benchmark process, not in the daemon under test: a thread per connection
(``ThreadingHTTPServer``; the daemon's shared httpx client keeps at most 100 connections
open), keep-alive (HTTP/1.1), and ``TCP_NODELAY`` on every accepted socket, so a reply is
never held back by Nagle's algorithm waiting for a delayed ACK (40 ms on Linux). Times
are ``time.monotonic()``, the clock the harness reads too.

    with LocalApi(latency=0.02) as api:
        api.down = True
        ...  # the daemon's jobs call f"{api.url}/call/{n}"
        calls = api.snapshot()
"""

from __future__ import annotations

import bisect
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

__all__ = ["Call", "LocalApi", "max_in_window", "per_second"]


@dataclass(frozen=True, slots=True)
class Call:
    """One request the API answered."""

    at: float  # time.monotonic() when its head had been read
    status: int
    target: str  # "/call/17"

    @property
    def n(self) -> int | None:
        """The job's sequence number from a ``/call/N`` target (None for anything else)."""
        head, _, tail = self.target.rpartition("/")
        return int(tail) if head == "/call" and tail.isdigit() else None


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a connection the client keeps open never blocks shutdown
    block_on_close = False
    api: LocalApi


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a real API behind httpx
    server: _Server

    def setup(self) -> None:
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().setup()

    def do_GET(self) -> None:
        self.server.api.answer(self)

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        self.server.api.answer(self)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request on stderr would cost more than the request


class LocalApi:
    """Serve on 127.0.0.1 (a free port) from ``start()`` until ``stop()``.

    ``down``: answer 503 (no ``Retry-After``: the daemon's own cool-down is measured);
    otherwise 200 after ``latency`` seconds. Both may be changed while it serves.
    """

    def __init__(self, *, latency: float = 0.0) -> None:
        self.down = False
        self.latency = latency
        self._lock = threading.Lock()
        self._calls: list[Call] = []
        self._in_flight = 0
        self._max_in_flight = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the local API is not serving")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LocalApi:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.api = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> LocalApi:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def answer(self, request: BaseHTTPRequestHandler) -> None:
        at = time.monotonic()
        with self._lock:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            status = 503 if self.down else 200
            if status == 200 and self.latency > 0:
                time.sleep(self.latency)
            body = b"down\n" if status == 503 else b"ok\n"
            request.send_response(status)
            request.send_header("content-type", "text/plain")
            request.send_header("content-length", str(len(body)))
            request.end_headers()
            request.wfile.write(body)
        finally:
            with self._lock:
                self._in_flight -= 1
                self._calls.append(Call(at, status, request.path))

    def reset(self) -> None:
        """Forget the calls so far and the highest concurrency (between runs)."""
        with self._lock:
            self._calls = []
            self._max_in_flight = self._in_flight

    def snapshot(self) -> list[Call]:
        """Every call answered since the last ``reset()``, in order of arrival."""
        with self._lock:
            calls = list(self._calls)
        calls.sort(key=lambda c: c.at)
        return calls

    @property
    def count(self) -> int:
        """How many calls were answered since the last ``reset()``."""
        with self._lock:
            return len(self._calls)

    @property
    def max_in_flight(self) -> int:
        """The most requests being answered at once since the last ``reset()``."""
        with self._lock:
            return self._max_in_flight


def max_in_window(times: Sequence[float], width: float = 1.0) -> tuple[int, float]:
    """The most of ``times`` (sorted) in any half-open window ``[t, t + width)``, and the
    start of the first such window. The busiest window can always be slid right until it
    starts on one of the times, so only those starts are tried."""
    best, best_start = 0, times[0] if times else 0.0
    for i, start in enumerate(times):
        count = bisect.bisect_left(times, start + width, lo=i) - i
        if count > best:
            best, best_start = count, start
    return best, best_start


def per_second(times: Sequence[float], origin: float) -> list[int]:
    """Counts per whole second after ``origin`` (for the JSON record, not the table)."""
    counts: list[int] = []
    for t in times:
        second = max(0, int(t - origin))
        if second >= len(counts):
            counts.extend([0] * (second + 1 - len(counts)))
        counts[second] += 1
    return counts
