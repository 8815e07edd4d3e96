"""`tubeworker run` talking sd_notify to a unix datagram socket the test binds, as systemd's
would be: READY=1, STATUS= summaries, STOPPING=1 with EXTEND_TIMEOUT_USEC= through a drain,
and WATCHDOG=1 pings that come from the event loop, so a blocked loop sends none.

systemd itself is not needed: the socket and the environment (NOTIFY_SOCKET, WATCHDOG_USEC)
are all a Type=notify service sees of it.
"""

from __future__ import annotations

import json
import signal
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import greenstalk
import pytest

from tests.support.beanstalkd import BeanstalkdProcess
from tests.support.process import DaemonProcess
from tests.support.waiting import wait_until_sync
from tubeworker.service.status import DRAIN_MARGIN

pytestmark = pytest.mark.slow

Message = dict[str, str]
PING: Message = {"WATCHDOG": "1"}


class NotifySocket:
    """The receiving end of NOTIFY_SOCKET; keeps every message, in order of arrival."""

    def __init__(self, sock: socket.socket, path: Path) -> None:
        self.sock = sock
        self.path = path
        self.messages: list[Message] = []

    def receive(self, timeout: float) -> Message | None:
        """The next message, or None if none came within ``timeout`` seconds."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (TimeoutError, BlockingIOError):  # a timeout of 0 is non-blocking
            return None
        message = dict(line.split("=", 1) for line in data.decode().splitlines())
        self.messages.append(message)
        return message

    def wait_for(self, match: Callable[[Message], bool], *, timeout: float, what: str) -> Message:
        while (message := self.receive(timeout)) is not None:
            if match(message):
                return message
        raise AssertionError(f"no {what} within {timeout} s; got {self.messages}")

    def read_queued(self) -> list[Message]:
        """Whatever has arrived and not been read yet (all of it was sent before now)."""
        queued = []
        while (message := self.receive(0.0)) is not None:
            queued.append(message)
        return queued


@contextmanager
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        yield NotifySocket(sock, path)


def write_config(path: Path, server: BeanstalkdProcess, *, drain_timeout: float) -> Path:
    path.write_text(
        "\n".join(
            [
                "[worker]",
                f'servers = ["{server.address}"]',
                f"drain_timeout = {drain_timeout}",
                "[handlers]",
                '"sleepy" = "tests.e2e.handlers:sleepy"',
                '"block_loop" = "tests.e2e.handlers:block_loop"',
                "[[pool]]",
                'tubes = ["e2e"]',
                "concurrency = 2",
            ]
        )
        + "\n"
    )
    return path


def put_jobs(server: BeanstalkdProcess, task: str, payloads: list[dict[str, object]]) -> None:
    with greenstalk.Client((server.host, server.port), use="e2e") as client:
        for payload in payloads:
            client.put(json.dumps({"task": task, "payload": payload}), ttr=120)


def ready_in_tube(server: BeanstalkdProcess) -> int:
    with greenstalk.Client((server.host, server.port)) as client:
        return int(client.stats_tube("e2e")["current-jobs-ready"])


def start_daemon(
    daemons: list[DaemonProcess], config: Path, tmp_path: Path, notify: NotifySocket, usec: int
) -> DaemonProcess:
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": str(usec), "WATCHDOG_PID": ""}
    daemon = DaemonProcess(config, tmp_path, env=env)
    daemons.append(daemon.start())
    return daemon


def test_given_systemd_then_ready_status_stopping_and_drain_extensions_come_in_order(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    drain_timeout = 3
    config = write_config(tmp_path / "w.toml", beanstalkd, drain_timeout=drain_timeout)
    with notify_socket(tmp_path) as notify:
        # Given a worker under "systemd" with a 1 s watchdog, running two long jobs
        daemon = start_daemon(daemons, config, tmp_path, notify, usec=1_000_000)
        notify.wait_for(lambda m: "READY" in m, timeout=20, what="READY=1")
        put_jobs(beanstalkd, "sleepy", [{"n": n, "seconds": 120} for n in range(2)])
        wait_until_sync(lambda: len(daemon.runs("start")) == 2, what="2 running jobs")
        notify.wait_for(
            lambda m: m.get("STATUS", "").startswith("2 in flight, "),
            timeout=20,
            what="a STATUS= summary with the running jobs",
        )
        # When it is told to stop while they run
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=drain_timeout + 20) == 0
        notify.read_queued()  # it has exited: everything it sent is here

    states = [m for m in notify.messages if m != PING]
    ready = next(i for i, m in enumerate(states) if "READY" in m)
    summary = next(i for i, m in enumerate(states) if m.get("STATUS", "").startswith("2 in"))
    stopping = next(i for i, m in enumerate(states) if "STOPPING" in m)
    # Then: READY=1 first, a summary while running, then STOPPING=1, once each
    assert ready == 0 < summary < stopping
    assert [m for m in states if "READY" in m or "STOPPING" in m] == [
        states[ready],
        states[stopping],
    ]
    assert states[ready]["STATUS"].startswith("running pools ")
    assert all(set(m) == {"STATUS"} for m in states[ready + 1 : stopping])
    assert all(" done/min" in m["STATUS"] for m in states[ready + 1 : stopping])
    # ...STOPPING=1 says what drains and stretches the stop timeout past the drain deadline
    first = states[stopping]
    assert first["STATUS"] == f"draining (SIGTERM): 2 jobs running, {drain_timeout}s left"
    extend = int(first["EXTEND_TIMEOUT_USEC"])
    assert (drain_timeout + DRAIN_MARGIN - 1) * 1e6 < extend <= (drain_timeout + DRAIN_MARGIN) * 1e6
    # ...renewed while the drain lasts, each reaching the deadline plus the margin
    drain = states[stopping + 1 : -1]
    assert len(drain) >= 2, states
    assert all(m["STATUS"].startswith("draining (SIGTERM): 2 jobs running, ") for m in drain)
    extensions = [int(m["EXTEND_TIMEOUT_USEC"]) for m in [first, *drain]]
    assert extensions == sorted(extensions, reverse=True)
    assert all(usec >= DRAIN_MARGIN * 1e6 for usec in extensions)
    # ...and at the deadline, the last word before the running jobs go back
    assert states[-1] == {
        "STATUS": "draining (SIGTERM): deadline passed, returning 2 running jobs",
        "EXTEND_TIMEOUT_USEC": str(int(DRAIN_MARGIN * 1e6)),
    }
    # The watchdog pinged before READY=1 was read and kept pinging through the drain
    after_stopping = notify.messages[notify.messages.index(first) :]
    assert PING in notify.messages
    assert PING in after_stopping
    wait_until_sync(lambda: ready_in_tube(beanstalkd) == 2, what="both jobs back in the tube")


def test_given_a_handler_blocking_the_event_loop_then_watchdog_pings_stop_until_it_returns(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    release = tmp_path / "release"
    config = write_config(tmp_path / "w.toml", beanstalkd, drain_timeout=5)
    watchdog_usec = 200_000  # WatchdogSec=0.2s: a ping every 0.1 s
    with notify_socket(tmp_path) as notify:
        daemon = start_daemon(daemons, config, tmp_path, notify, usec=watchdog_usec)
        notify.wait_for(lambda m: "READY" in m, timeout=20, what="READY=1")
        for _ in range(3):  # pinging on its own
            notify.wait_for(lambda m: m == PING, timeout=5, what="a WATCHDOG=1 ping")

        # Given a handler that blocks the event loop until the test lets it go
        put_jobs(beanstalkd, "block_loop", [{"n": 1, "release": str(release)}])
        wait_until_sync(lambda: daemon.runs("start")[1] == 1, what="the blocking handler")
        notify.read_queued()  # sent before the loop blocked

        # Then nothing comes while it blocks: 7.5 watchdog periods, where systemd would
        # already have killed the process. (Waiting out a period is the point here: the
        # loop stays blocked until the release file exists, so this cannot race.)
        assert notify.receive(timeout=1.5) is None, "a ping came from a blocked event loop"
        assert daemon.runs("end")[1] == 0

        # When it returns, the pings come back
        release.touch()
        for _ in range(3):
            notify.wait_for(lambda m: m == PING, timeout=5, what="the pings to resume")
        wait_until_sync(lambda: daemon.runs("end")[1] == 1, what="the handler's end")

        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=20) == 0

    def blamed() -> bool:
        return any(
            e.get("event", "").startswith("event loop blocked") and e.get("handler") == "block_loop"
            for e in daemon.events()
        )

    wait_until_sync(blamed, what="the stall detector's warning naming block_loop")
