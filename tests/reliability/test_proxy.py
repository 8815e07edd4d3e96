"""The fault proxy itself, against a real beanstalkd: each control does what it says.

Raw sockets speak the protocol so that every byte is visible; greenstalk (connected
directly) is the independent observer of the server's state.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import greenstalk
import pytest

from tests.reliability.proxy import Proxy
from tests.support.beanstalkd import BeanstalkdProcess
from tests.support.waiting import wait_until_sync

MakeProxy = Callable[[str], Proxy]


class Raw:
    """A plain socket through the proxy."""

    def __init__(self, proxy: Proxy) -> None:
        self.sock = socket.create_connection((proxy.host, proxy.port), timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, line: bytes) -> None:
        self.sock.sendall(line + b"\r\n")

    def read(self, size: int, timeout: float = 5.0) -> bytes:
        """Exactly ``size`` bytes (fewer only at EOF)."""
        self.sock.settimeout(timeout)
        data = b""
        while len(data) < size:
            piece = self.sock.recv(size - len(data))
            if not piece:
                break
            data += piece
        return data

    def line(self, timeout: float = 5.0) -> bytes:
        self.sock.settimeout(timeout)
        data = b""
        while not data.endswith(b"\r\n"):
            piece = self.sock.recv(1)
            if not piece:
                break
            data += piece
        return data

    def silent_for(self, seconds: float) -> bool:
        """True if nothing arrives (and the connection stays open) for ``seconds``."""
        self.sock.settimeout(seconds)
        try:
            self.sock.recv(1)  # data or EOF: not silent
        except TimeoutError:
            return True
        return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def connect() -> Iterator[Callable[[Proxy], Raw]]:
    """``connect(proxy)``: a raw socket through the proxy, closed at teardown."""
    opened: list[Raw] = []

    def make(proxy: Proxy) -> Raw:
        opened.append(Raw(proxy))
        return opened[-1]

    yield make
    for raw in opened:
        raw.close()


Connect = Callable[[Proxy], Raw]


def direct(server: BeanstalkdProcess, tube: str = "default") -> greenstalk.Client[str]:
    return greenstalk.Client((server.host, server.port), use=tube, watch=tube)


def state(server: BeanstalkdProcess, job_id: int) -> str:
    with direct(server) as client:
        try:
            return str(client.stats_job(job_id)["state"])
        except greenstalk.NotFoundError:
            return "deleted"


def reserve_raw(raw: Raw, body_size: int) -> int:
    raw.send(b"reserve-with-timeout 1")
    head = raw.line()
    assert head.startswith(b"RESERVED "), head
    job_id = int(head.split()[1])
    assert len(raw.read(body_size + 2)) == body_size + 2
    return job_id


def test_forwards_both_ways_and_counts_connections(
    beanstalkd: BeanstalkdProcess, make_proxy: MakeProxy
) -> None:
    proxy = make_proxy(beanstalkd.address)
    with greenstalk.Client((proxy.host, proxy.port)) as client:
        job_id = client.put("hello")
        job = client.reserve(timeout=1)
        assert (job.id, job.body) == (job_id, "hello")
        client.delete(job)
        assert (proxy.opened, proxy.current) == (1, 1)
    wait_until_sync(lambda: proxy.current == 0, timeout=5, what="the link to close")
    assert state(beanstalkd, job_id) == "deleted"


def test_blackhole_kills_open_links_while_new_ones_work(
    beanstalkd: BeanstalkdProcess, make_proxy: MakeProxy, connect: Connect
) -> None:
    proxy = make_proxy(beanstalkd.address)
    old = connect(proxy)
    old.send(b"list-tube-used")
    assert old.line() == b"USING default\r\n"
    assert len(proxy.blackhole()) == 1

    old.send(b"list-tube-used")
    assert old.silent_for(0.5), "a blackholed link answered"
    with greenstalk.Client((proxy.host, proxy.port)) as fresh:  # a new flow works
        assert fresh.put("x") > 0
        assert proxy.current == 2  # nothing was closed
    assert sum(link.dropped["client_to_server"] for link in proxy.links()) > 0


def test_a_close_passes_a_blackhole_and_returns_the_reserved_job(
    beanstalkd: BeanstalkdProcess, make_proxy: MakeProxy, connect: Connect
) -> None:
    proxy = make_proxy(beanstalkd.address)
    with direct(beanstalkd) as client:
        job_id = client.put("abc")
    holder = connect(proxy)
    assert reserve_raw(holder, 3) == job_id
    proxy.blackhole()
    holder.close()  # the client gives the dead link up
    wait_until_sync(lambda: state(beanstalkd, job_id) == "ready", timeout=5, what="job ready")


def test_blackhole_of_new_connections_then_heal(
    beanstalkd: BeanstalkdProcess, make_proxy: MakeProxy, connect: Connect
) -> None:
    proxy = make_proxy(beanstalkd.address)
    proxy.blackhole(new_connections=True)
    raw = connect(proxy)
    raw.send(b"list-tube-used")
    assert raw.silent_for(0.3)
    proxy.heal()
    raw.send(b"list-tube-used")  # the first one was dropped, not delayed
    assert raw.line() == b"USING default\r\n"
    assert raw.silent_for(0.2)


def test_stall_mode_holds_bytes_until_healed(
    beanstalkd: BeanstalkdProcess, make_proxy: MakeProxy, connect: Connect
) -> None:
    proxy = make_proxy(beanstalkd.address)
    raw = connect(proxy)
    raw.send(b"list-tube-used")
    assert raw.line() == b"USING default\r\n"
    proxy.blackhole(mode="stall")
    raw.send(b"list-tube-used")
    assert raw.silent_for(0.3)
    proxy.heal()
    assert raw.line() == b"USING default\r\n"  # not read meanwhile, so not lost


def test_per_link_blackhole_spares_the_other_links(
    beanstalkd: BeanstalkdProcess, make_proxy: MakeProxy, connect: Connect
) -> None:
    proxy = make_proxy(beanstalkd.address)
    first, second = connect(proxy), connect(proxy)
    for raw in (first, second):
        raw.send(b"list-tube-used")
        assert raw.line() == b"USING default\r\n"
    ids = sorted(link.id for link in proxy.links())
    proxy.blackhole(links=[ids[0]])
    first.send(b"list-tube-used")
    second.send(b"list-tube-used")
    assert second.line() == b"USING default\r\n"
    assert first.silent_for(0.3)


def test_throttle_paces_server_bytes(
    beanstalkd: BeanstalkdProcess, make_proxy: MakeProxy, connect: Connect
) -> None:
    size, rate = 60_000, 200_000
    with direct(beanstalkd) as client:
        client.put("x" * size)
    proxy = make_proxy(beanstalkd.address)
    proxy.throttle(rate)
    raw = connect(proxy)
    started = time.monotonic()
    reserve_raw(raw, size)
    elapsed = time.monotonic() - started
    measured = size / elapsed
    assert 0.5 * rate < measured < 1.3 * rate, f"{measured:.0f} B/s for a {rate} B/s throttle"


def test_fragment_delivers_one_byte_at_a_time(
    beanstalkd: BeanstalkdProcess, make_proxy: MakeProxy, connect: Connect
) -> None:
    proxy = make_proxy(beanstalkd.address)
    proxy.fragment(per_byte_delay=0.002)
    raw = connect(proxy)
    raw.send(b"stats-tube default")
    head = raw.line(timeout=10)
    assert head.startswith(b"OK "), head
    size = int(head.split()[1]) + 2
    raw.sock.settimeout(5)
    started, got, reads = time.monotonic(), 0, 0
    while got < size:
        got += len(raw.sock.recv(size - got))
        reads += 1
    elapsed = time.monotonic() - started
    assert elapsed >= size * 0.002 * 0.8, f"{size} bytes in {elapsed:.3f} s"
    assert reads >= size // 4, f"{size} bytes came in only {reads} reads"


def test_delay_is_latency_not_a_queue(
    beanstalkd: BeanstalkdProcess, make_proxy: MakeProxy, connect: Connect
) -> None:
    proxy = make_proxy(beanstalkd.address)
    proxy.delay(0.4)
    raw = connect(proxy)
    started = time.monotonic()
    for _ in range(3):  # three replies in flight at once still take one latency
        raw.send(b"list-tube-used")
        time.sleep(0.05)  # the point: separate chunks, each delayed on its own
    for _ in range(3):
        assert raw.line() == b"USING default\r\n"
    elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 1.0, f"three pipelined replies took {elapsed:.2f} s"


@pytest.mark.parametrize("how", ["rst", "fin"])
def test_cut_closes_every_link(
    beanstalkd: BeanstalkdProcess, make_proxy: MakeProxy, connect: Connect, how: str
) -> None:
    proxy = make_proxy(beanstalkd.address)
    raw = connect(proxy)
    raw.send(b"list-tube-used")
    assert raw.line() == b"USING default\r\n"
    assert proxy.cut(how) == 1  # type: ignore[arg-type]
    raw.sock.settimeout(5)
    if how == "rst":
        with pytest.raises(ConnectionResetError):
            raw.sock.recv(10)
    else:
        assert raw.sock.recv(10) == b""
    wait_until_sync(lambda: proxy.current == 0, timeout=5, what="no link open")
    assert [c.reason for c in proxy.cuts] == ["cut()"]


def test_cut_after_delete_applies_it_and_loses_the_reply(
    beanstalkd: BeanstalkdProcess, make_proxy: MakeProxy, connect: Connect
) -> None:
    with direct(beanstalkd) as client:
        job_id = client.put("abc")
        other = client.put("def")
    proxy = make_proxy(beanstalkd.address)
    proxy.cut_after(b"delete ", times=1)
    raw = connect(proxy)
    assert reserve_raw(raw, 3) == job_id
    raw.send(f"delete {job_id}".encode())
    raw.sock.settimeout(5)
    with pytest.raises(ConnectionResetError):
        raw.sock.recv(100)  # the DELETED reply never arrives
    wait_until_sync(lambda: state(beanstalkd, job_id) == "deleted", timeout=5, what="deleted")
    assert [cut.reason for cut in proxy.cuts] == ["cut_after(b'delete ')"]

    again = connect(proxy)  # times=1: disarmed
    assert reserve_raw(again, 3) == other
    again.send(f"delete {other}".encode())
    assert again.line() == b"DELETED\r\n"


def test_inject_swallows_the_reply(
    beanstalkd: BeanstalkdProcess, make_proxy: MakeProxy, connect: Connect
) -> None:
    proxy = make_proxy(beanstalkd.address)
    raw = connect(proxy)
    raw.send(b"list-tube-used")
    assert raw.line() == b"USING default\r\n"
    (link,) = proxy.links()
    proxy.inject(link.id, b"use other\r\n", b"USING other\r\n")
    assert raw.silent_for(0.3)
    raw.send(b"list-tube-used")
    assert raw.line() == b"USING other\r\n"  # the injected command ran on this connection
