"""The Trio client against a scripted fake server: ownership, cancellation, errors, deadlines."""

from __future__ import annotations

import random
from functools import partial

import greenstalk
import pytest
import trio
import trio.testing

from tubeworker.backoff import exponential_delay, full_jitter_delay
from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import (
    Address,
    Client,
    connect,
    connect_with_backoff,
    parse_address,
)
from tubeworker.errors import (
    ConnectionLostError,
    LocalProtocolError,
    RemoteProtocolError,
    ServerUnresponsiveError,
)


def client_and_server() -> tuple[Client, trio.abc.Stream]:
    ours, theirs = trio.testing.memory_stream_pair()
    return Client(ours), theirs


async def read_line(stream: trio.abc.Stream) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = await stream.receive_some(1)
        assert chunk, "client closed"
        data += chunk
    return data


async def test_request_and_pipeline_round_trip() -> None:
    client, server = client_and_server()

    async def serve() -> None:
        assert await read_line(server) == b"delete 7\r\n"
        assert await read_line(server) == b"reserve-with-timeout 1\r\n"
        await server.send_all(b"DELETED\r\nRESERVED 8 2\r\nhi\r\n")
        assert await read_line(server) == b"stats-job 8\r\n"
        await server.send_all(b"NOT_FOUND\r\n")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        assert await client.pipeline([p.Delete(7), p.ReserveWithTimeout(1)]) == [
            p.Deleted(),
            p.Reserved(8, b"hi"),
        ]
        with pytest.raises(greenstalk.NotFoundError):
            await client.stats_job(8)
    assert client.is_usable


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"TIMED_OUT\r\n", greenstalk.TimedOutError),
        (b"DEADLINE_SOON\r\n", greenstalk.DeadlineSoonError),
        (b"OUT_OF_MEMORY\r\n", greenstalk.OutOfMemoryError),
        (b"INTERNAL_ERROR\r\n", greenstalk.InternalError),
        (b"BAD_FORMAT\r\n", greenstalk.BadFormatError),
        (b"UNKNOWN_COMMAND\r\n", greenstalk.UnknownCommandError),
    ],
)
async def test_error_replies_raise_greenstalk_errors_and_keep_the_connection(
    reply: bytes, error: type[Exception]
) -> None:
    client, server = client_and_server()
    await server.send_all(reply + b"USING default\r\n")
    with pytest.raises(error):
        await client.reserve(timeout=0)
    assert await client.list_tube_used() == "default"


async def test_put_errors() -> None:
    client, server = client_and_server()
    await server.send_all(b"JOB_TOO_BIG\r\nDRAINING\r\nBURIED 5\r\nEXPECTED_CRLF\r\n")
    with pytest.raises(greenstalk.JobTooBigError):
        await client.put(b"x")
    with pytest.raises(greenstalk.DrainingError):
        await client.put(b"x")
    with pytest.raises(greenstalk.BuriedError) as info:
        await client.put(b"x")
    assert info.value.id == 5
    with pytest.raises(greenstalk.ExpectedCrlfError):
        await client.put(b"x")


async def test_cancelled_reserve_closes_the_connection() -> None:
    # Given a reserve blocked on the server
    client, server = client_and_server()
    with trio.move_on_after(1):
        await client.reserve()
    # Then the connection is closed, never reused: the server would still deliver a job to it
    assert not client.is_usable
    assert await server.receive_some(100) == b"reserve\r\n"
    assert await server.receive_some(100) == b""  # EOF: we closed
    with pytest.raises(ConnectionLostError, match="interrupted by Cancelled"):
        await client.stats()


async def test_cancelled_mid_reply_closes_the_connection() -> None:
    client, server = client_and_server()
    await server.send_all(b"RESERVED 1 10\r\n01234")  # half a body
    with trio.move_on_after(1):
        await client.reserve()
    assert not client.is_usable


async def test_server_eof_is_connection_lost() -> None:
    client, server = client_and_server()
    await server.aclose()
    with pytest.raises(ConnectionLostError):
        await client.reserve()
    assert not client.is_usable


async def test_buffered_replies_come_without_io_and_garbage_is_left_to_receive() -> None:
    client, server = client_and_server()
    await server.send_all(b"DELETED\r\nRESERVED 8 2\r\nhi\r\nNOT_")
    await client.send(p.Delete(7), p.ReserveWithTimeout(0), p.Delete(9), p.Delete(10))
    assert client.buffered_reply() is None  # nothing read yet: receive() reads
    assert await client.receive() == p.Deleted()
    assert client.buffered_reply() == p.Reserved(8, b"hi")  # came with the first
    assert client.buffered_reply() is None  # half a reply
    await server.send_all(b"FOUND\r\nGARBAGE\r\n")
    assert await client.receive() == p.NotFound()
    assert client.buffered_reply() is None  # garbage: receive() raises and closes
    with pytest.raises(RemoteProtocolError, match="unknown reply"):
        await client.receive()
    assert not client.is_usable
    assert client.buffered_reply() is None


async def test_garbage_poisons_and_closes() -> None:
    client, server = client_and_server()
    await server.send_all(b"HELLO THERE\r\n")
    with pytest.raises(RemoteProtocolError, match="unknown reply"):
        await client.delete(1)
    assert not client.is_usable
    with pytest.raises(ConnectionLostError):
        await client.delete(1)


async def test_local_error_sends_nothing_and_keeps_the_connection() -> None:
    client, server = client_and_server()
    with pytest.raises(LocalProtocolError, match="tube"):
        await client.watch("bad name")
    await server.send_all(b"WATCHING 2\r\n")
    assert await client.watch("good") == 2
    assert await server.receive_some(100) == b"watch good\r\n"


async def test_receive_without_a_command_is_a_local_error() -> None:
    client, _server = client_and_server()
    with pytest.raises(LocalProtocolError, match="no command outstanding"):
        await client.receive()
    assert client.is_usable


async def test_two_tasks_on_one_connection_are_refused() -> None:
    client, _server = client_and_server()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.reserve)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await client.stats()
        nursery.cancel_scope.cancel()


async def test_quit_sends_quit_and_closes() -> None:
    client, server = client_and_server()
    await client.quit()
    assert await server.receive_some(100) == b"quit\r\n"
    assert not client.is_usable


# ---- connecting: deadlines for the handshake and the first reply (B2)


async def test_server_that_accepts_but_never_answers_is_unresponsive() -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        with pytest.raises(ServerUnresponsiveError, match=r"did not answer within 0\.2"):
            await connect(f"127.0.0.1:{port}", connect_timeout=0.2)
        nursery.cancel_scope.cancel()


async def test_refused_connection_is_connection_lost() -> None:
    with trio.socket.socket() as sock:  # bound, never listening: connect is refused
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with pytest.raises(ConnectionLostError, match="cannot connect"):
            await connect(f"127.0.0.1:{port}")


async def test_connect_with_backoff_retries_with_growing_delays(
    autojump_clock: trio.testing.MockClock,
) -> None:
    retries: list[tuple[int, float]] = []
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with pytest.raises(ConnectionLostError):
            await connect_with_backoff(
                f"127.0.0.1:{port}",
                base=1.0,
                cap=4.0,
                attempts=5,
                rng=random.Random(1),
                on_retry=lambda n, delay, _exc: retries.append((n, delay)),
            )
    assert [n for n, _ in retries] == [1, 2, 3, 4]
    for n, delay in retries:
        assert 0 <= delay <= min(4.0, 2 ** (n - 1))


# ---- pure helpers


def test_exponential_delay_doubles_up_to_the_cap() -> None:
    assert [exponential_delay(n, base=1, cap=30) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert exponential_delay(10_000, base=1, cap=30) == 30  # no overflow
    with pytest.raises(ValueError, match="attempt"):
        exponential_delay(0, base=1, cap=2)


def test_full_jitter_stays_within_the_envelope() -> None:
    rng = random.Random(7)
    draws = [full_jitter_delay(4, base=1, cap=30, rng=rng) for _ in range(1000)]
    assert all(0 <= d <= 8 for d in draws)
    assert max(draws) > 6
    assert min(draws) < 2


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:11301", Address("127.0.0.1", 11301)),
        ("localhost", Address("localhost", 11300)),
        ("[::1]:11302", Address("::1", 11302)),
        ("::1", Address("::1", 11300)),
        ("unix:/run/beanstalkd.sock", Address(unix_path="/run/beanstalkd.sock")),
    ],
)
def test_parse_address(text: str, address: Address) -> None:
    assert parse_address(text) == address


@pytest.mark.parametrize("text", ["", ":11300", "host:0", "host:99999", "host:x", "unix:", "[::1"])
def test_parse_address_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=repr(text).replace("[", r"\[")):
        parse_address(text)


async def test_given_a_watchdog_when_a_reply_makes_no_progress_then_the_connection_is_given_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ours, _silent_server = trio.testing.memory_stream_pair()
    client = Client(ours, reply_timeout=10.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run_watchdog)
        await client.send(p.ReserveWithTimeout(5))
        started = trio.current_time()
        # The server says nothing: a blocked reserve may take 5 s, then 10 s more at most.
        with pytest.raises(ConnectionLostError, match="no reply from beanstalkd for 15 s"):
            await client.receive(patience=5)
        assert trio.current_time() - started == pytest.approx(15, abs=0.01)
        assert not client.is_usable


async def test_given_a_watchdog_when_bytes_trickle_in_then_a_slow_reply_is_not_given_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    client = Client(ours, reply_timeout=1.0)

    async def drip() -> None:
        await read_line(theirs)
        for byte in b"DELETED\r\n":  # 9 bytes, one every 0.9 s: 8 s for a 1 s timeout
            await trio.sleep(0.9)
            await theirs.send_all(bytes([byte]))

    async with trio.open_nursery() as nursery:
        await nursery.start(client.run_watchdog)
        nursery.start_soon(drip)
        assert await client.request(p.Delete(1)) == p.Deleted()
        nursery.cancel_scope.cancel()
