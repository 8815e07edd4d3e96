"""http.request as users run it: `tubeworker run` (a subprocess, a real beanstalkd, a config
file, the default logging) delivering webhooks, signed with the secret named in the
config's [settings."http.request"], to a local HTTP server that verifies every
signature; an order the receiver says is gone is buried with the receiver's words."""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import greenstalk
import pytest

from tests.support.beanstalkd import BeanstalkdProcess
from tests.support.process import DaemonProcess
from tests.support.waiting import wait_until_sync

pytestmark = pytest.mark.slow

SECRET = b"e2e webhook secret"
ORDERS = 5


@dataclass
class Receiver:
    """What the webhook receiver saw: (path, body, signature valid) per request."""

    url: str = ""
    deliveries: list[tuple[str, bytes, bool]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def seen(self) -> list[tuple[str, bytes, bool]]:
        with self.lock:
            return list(self.deliveries)


@contextmanager
def webhook_receiver(secret: bytes) -> Iterator[Receiver]:
    """A threaded HTTP server on 127.0.0.1 checking X-Tubeworker-Signature as a receiver
    would: HMAC-SHA256 over the raw body, compared in constant time. 204 when valid, 401
    when not; /orders/gone answers 410."""
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            wanted = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
            valid = hmac.compare_digest(self.headers.get("X-Tubeworker-Signature", ""), wanted)
            with receiver.lock:
                receiver.deliveries.append((self.path, body, valid))
            if not valid:
                self._answer(401, b"bad signature")
            elif self.path == "/orders/gone":
                self._answer(410, b"order gone: cancelled by the customer")
            else:
                self._answer(204, b"")

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # quiet: the test reads what it needs from `receiver`

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def write_config(path: Path, server: BeanstalkdProcess, secret_file: Path) -> Path:
    # No [logging] table: the default (JSON lines when stdout is not a terminal).
    path.write_text(
        "\n".join(
            [
                "[worker]",
                f'servers = ["{server.address}"]',
                "drain_timeout = 5",
                '[settings."http.request"]',
                f'signing_secret_file = "{secret_file}"',
                "[[pool]]",
                'name = "webhooks"',
                'tubes = ["webhooks"]',
                "concurrency = 4",
            ]
        )
        + "\n"
    )
    return path


def tube_counts(server: BeanstalkdProcess) -> dict[str, int]:
    with greenstalk.Client((server.host, server.port)) as client:
        stats = client.stats_tube("webhooks")
    return {k: int(v) for k, v in stats.items() if k.startswith("current-jobs-")}


def test_given_http_request_jobs_then_delivered_signed_and_a_gone_order_is_buried(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    secret_file = tmp_path / "webhook.secret"
    secret_file.write_bytes(SECRET + b"\n")  # as `echo secret > file` writes it
    config = write_config(tmp_path / "worker.toml", beanstalkd, secret_file)
    with webhook_receiver(SECRET) as receiver:
        jobs = [
            {"url": f"{receiver.url}/orders/{n}", "json": {"order": n, "paid": True}}
            for n in range(ORDERS)
        ]
        jobs.append({"url": f"{receiver.url}/orders/gone", "json": {"order": "gone"}})
        with greenstalk.Client((beanstalkd.host, beanstalkd.port), use="webhooks") as client:
            ids = [
                client.put(json.dumps({"task": "http.request", "payload": job}), ttr=30)
                for job in jobs
            ]
        daemon = DaemonProcess(config, tmp_path)
        daemon.env.pop("TUBEWORKER_LOG_FORMAT")  # the default logging, as users run it
        daemons.append(daemon.start())

        def all_settled() -> bool:
            assert daemon.proc is not None
            assert daemon.proc.poll() is None, daemon.stderr.read_text()
            counts = tube_counts(beanstalkd)
            return counts["current-jobs-buried"] == 1 and sum(counts.values()) == 1

        wait_until_sync(all_settled, timeout=30, what="5 jobs deleted and 1 buried")

        def all_logged() -> bool:
            names = [e.get("event") for e in daemon.events()]
            return names.count("job done") == ORDERS and "job buried" in names

        wait_until_sync(all_logged, timeout=10, what="every outcome logged")
        deliveries = receiver.seen()

    # Every request reached the receiver once, signed over its exact body.
    assert sorted(path for path, _, _ in deliveries) == sorted(
        [f"/orders/{n}" for n in range(ORDERS)] + ["/orders/gone"]
    )
    assert all(valid for _, _, valid in deliveries), deliveries
    bodies = {path: json.loads(body) for path, body, _ in deliveries}
    assert bodies["/orders/3"] == {"order": 3, "paid": True}

    events = daemon.events()
    done = [e for e in events if e.get("event") == "job done"]
    assert sorted(e["job_id"] for e in done) == sorted(ids[:ORDERS])
    assert {e["handler"] for e in done} == {"http.request"}
    (buried,) = [e for e in events if e.get("event") == "job buried"]
    assert (buried["job_id"], buried["cause"]) == (ids[-1], "handler_bury")
    assert buried["reason"] == (
        f"HTTP 410 from POST {receiver.url}/orders/gone: order gone: cancelled by the customer"
    )
    assert not any(e.get("event") == "job released" for e in events)

    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=20) == 0
    assert "Traceback" not in daemon.stderr.read_text()
