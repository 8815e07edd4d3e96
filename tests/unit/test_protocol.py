"""The sans-I/O protocol: exact command bytes, every reply whole and byte by byte, garbage."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tubeworker.beanstalk import protocol as p
from tubeworker.errors import LocalProtocolError, RemoteProtocolError

JOB_STATS_BODY = (
    b"---\nid: 7\ntube: emails\nstate: reserved\npri: 1024\nage: 3\ndelay: 0\nttr: 60\n"
    b"time-left: 59\nfile: 0\nreserves: 2\ntimeouts: 0\nreleases: 1\nburies: 0\nkicks: 0\n"
)
TUBE_STATS_BODY = (
    b"---\nname: default\ncurrent-jobs-urgent: 1\ncurrent-jobs-ready: 1\n"
    b"current-jobs-reserved: 0\ncurrent-jobs-delayed: 0\ncurrent-jobs-buried: 0\n"
    b"total-jobs: 1\ncurrent-using: 1\ncurrent-watching: 1\ncurrent-waiting: 0\n"
    b"cmd-delete: 0\ncmd-pause-tube: 0\npause: 0\npause-time-left: 0\n"
)
SERVER_STATS_BODY = (
    b"---\ncurrent-jobs-urgent: 0\ncurrent-jobs-ready: 3\ncmd-put: 3\n"
    b"job-timeouts: 0\nmax-job-size: 65535\ncurrent-connections: 1\npid: 2196\n"
    b'version: "1.12"\nrusage-utime: 0.001311\nrusage-stime: 0.000000\nuptime: 0\n'
    b"draining: false\nid: c3ff15c0b9ef76f6\nhostname: vm\nos: #1 SMP PREEMPT_DYNAMIC @0\n"
    b"platform: x86_64\nsome-future-key: 5\n"
)


def ok(body: bytes) -> bytes:
    return b"OK %d\r\n%b\r\n" % (len(body), body)


# (command, exact bytes it writes)
COMMAND_BYTES: list[tuple[p.Command, bytes]] = [
    (p.Put(b"hello", priority=5, delay=2, ttr=30), b"put 5 2 30 5\r\nhello\r\n"),
    (p.Put(b""), b"put 1024 0 60 0\r\n\r\n"),
    (p.Put(b"a\r\nb"), b"put 1024 0 60 4\r\na\r\nb\r\n"),
    (p.Use("emails"), b"use emails\r\n"),
    (p.Reserve(), b"reserve\r\n"),
    (p.ReserveWithTimeout(0), b"reserve-with-timeout 0\r\n"),
    (p.ReserveWithTimeout(2**31 - 1), b"reserve-with-timeout 2147483647\r\n"),
    (p.ReserveJob(9), b"reserve-job 9\r\n"),
    (p.Delete(7), b"delete 7\r\n"),
    (p.Release(7, priority=3, delay=4), b"release 7 3 4\r\n"),
    (p.Bury(7, priority=2), b"bury 7 2\r\n"),
    (p.Touch(7), b"touch 7\r\n"),
    (p.Watch("a-b"), b"watch a-b\r\n"),
    (p.Ignore("default"), b"ignore default\r\n"),
    (p.Peek(7), b"peek 7\r\n"),
    (p.PeekReady(), b"peek-ready\r\n"),
    (p.PeekDelayed(), b"peek-delayed\r\n"),
    (p.PeekBuried(), b"peek-buried\r\n"),
    (p.Kick(100), b"kick 100\r\n"),
    (p.KickJob(7), b"kick-job 7\r\n"),
    (p.StatsJob(7), b"stats-job 7\r\n"),
    (p.StatsTube("default"), b"stats-tube default\r\n"),
    (p.Stats(), b"stats\r\n"),
    (p.ListTubes(), b"list-tubes\r\n"),
    (p.ListTubeUsed(), b"list-tube-used\r\n"),
    (p.ListTubesWatched(), b"list-tubes-watched\r\n"),
    (p.PauseTube("t", 4294967295), b"pause-tube t 4294967295\r\n"),
    (p.Quit(), b"quit\r\n"),
]


@pytest.mark.parametrize(("command", "wire"), COMMAND_BYTES, ids=lambda v: repr(v)[:40])
def test_command_bytes_are_exact(command: p.Command, wire: bytes) -> None:
    assert p.Connection().send(command) == wire


# (command, reply bytes, expected reply)
REPLIES: list[tuple[p.Command, bytes, p.Reply]] = [
    (p.Put(b"x"), b"INSERTED 12\r\n", p.Inserted(12)),
    (p.Put(b"x"), b"BURIED 12\r\n", p.Buried(12)),
    (p.Put(b"x"), b"EXPECTED_CRLF\r\n", p.ExpectedCrlf()),
    (p.Put(b"x"), b"JOB_TOO_BIG\r\n", p.JobTooBig()),
    (p.Put(b"x"), b"DRAINING\r\n", p.Draining()),
    (p.Use("a"), b"USING a\r\n", p.Using("a")),
    (p.Reserve(), b"RESERVED 3 5\r\nhello\r\n", p.Reserved(3, b"hello")),
    (p.Reserve(), b"RESERVED 3 0\r\n\r\n", p.Reserved(3, b"")),
    (p.Reserve(), b"RESERVED 3 4\r\n\r\n\r\n\r\n", p.Reserved(3, b"\r\n\r\n")),
    (p.Reserve(), b"DEADLINE_SOON\r\n", p.DeadlineSoon()),
    (p.ReserveWithTimeout(1), b"TIMED_OUT\r\n", p.TimedOut()),
    (p.ReserveJob(3), b"NOT_FOUND\r\n", p.NotFound()),
    (p.Delete(1), b"DELETED\r\n", p.Deleted()),
    (p.Delete(1), b"NOT_FOUND\r\n", p.NotFound()),
    (p.Release(1), b"RELEASED\r\n", p.Released()),
    (p.Release(1), b"BURIED\r\n", p.Buried()),
    (p.Bury(1), b"BURIED\r\n", p.Buried()),
    (p.Touch(1), b"TOUCHED\r\n", p.Touched()),
    (p.Watch("a"), b"WATCHING 2\r\n", p.Watching(2)),
    (p.Ignore("a"), b"NOT_IGNORED\r\n", p.NotIgnored()),
    (p.Peek(1), b"FOUND 1 2\r\nhi\r\n", p.Found(1, b"hi")),
    (p.PeekBuried(), b"NOT_FOUND\r\n", p.NotFound()),
    (p.Kick(5), b"KICKED 4\r\n", p.Kicked(4)),
    (p.KickJob(5), b"KICKED\r\n", p.Kicked()),
    (p.ListTubeUsed(), b"USING default\r\n", p.Using("default")),
    (p.ListTubes(), ok(b"---\n- default\n- a$b(c)\n"), p.TubeList(("default", "a$b(c)"))),
    (p.ListTubesWatched(), ok(b"---\n- default\n"), p.TubeList(("default",))),
    (p.PauseTube("a", 1), b"PAUSED\r\n", p.Paused()),
    (p.PauseTube("a", 1), b"NOT_FOUND\r\n", p.NotFound()),
    (p.StatsTube("a"), b"NOT_FOUND\r\n", p.NotFound()),
    (p.Stats(), b"OUT_OF_MEMORY\r\n", p.OutOfMemory()),
    (p.Delete(1), b"INTERNAL_ERROR\r\n", p.InternalError()),
    (p.Delete(1), b"BAD_FORMAT\r\n", p.BadFormat()),
    (p.Delete(1), b"UNKNOWN_COMMAND\r\n", p.UnknownCommand()),
]


def feed(conn: p.Connection, data: bytes, *, bytewise: bool) -> list[p.Reply]:
    replies: list[p.Reply] = []
    chunks = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    for chunk in chunks:
        conn.receive_data(chunk)
        while (event := conn.next_event()) is not p.NEED_DATA:
            assert isinstance(event, p.Reply)
            replies.append(event)
    return replies


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize(("command", "data", "expected"), REPLIES, ids=lambda v: repr(v)[:40])
def test_every_reply_parses_whole_and_one_byte_at_a_time(
    command: p.Command, data: bytes, expected: p.Reply, bytewise: bool
) -> None:
    conn = p.Connection()
    conn.send(command)
    assert feed(conn, data, bytewise=bytewise) == [expected]
    assert conn.pending == 0


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_stats_parse_to_typed_records(bytewise: bool) -> None:
    conn = p.Connection()
    conn.send_many([p.StatsJob(7), p.StatsTube("default"), p.Stats()])
    data = ok(JOB_STATS_BODY) + ok(TUBE_STATS_BODY) + ok(SERVER_STATS_BODY)
    job, tube, server = feed(conn, data, bytewise=bytewise)
    assert job == p.JobStats(
        id=7, tube="emails", state="reserved", pri=1024, age=3, delay=0, ttr=60,
        time_left=59, file=0, reserves=2, timeouts=0, releases=1, buries=0, kicks=0,
    )  # fmt: skip
    assert isinstance(tube, p.TubeStats)
    assert (tube.name, tube.current_jobs_ready, tube.pause) == ("default", 1, 0)
    assert isinstance(server, p.ServerStats)
    assert server.version == "1.12"  # quoted in the YAML, a str here
    assert server.max_job_size == 65535
    assert server.draining is False
    assert server.rusage_utime == pytest.approx(0.001311)
    assert server.id == "c3ff15c0b9ef76f6"
    assert server.os == "#1 SMP PREEMPT_DYNAMIC @0"
    assert server.cmd_put == 3
    assert server.current_workers == 0  # not printed: default


def test_pipelined_replies_match_commands_in_order() -> None:
    conn = p.Connection()
    wire = conn.send_many([p.Delete(7), p.ReserveWithTimeout(5)])
    assert wire == b"delete 7\r\nreserve-with-timeout 5\r\n"
    assert conn.pending == 2
    replies = feed(conn, b"DELETED\r\nRESERVED 8 2\r\nhi\r\n", bytewise=False)
    assert replies == [p.Deleted(), p.Reserved(8, b"hi")]


def test_reply_waits_for_whole_body() -> None:
    conn = p.Connection()
    conn.send(p.Reserve())
    conn.receive_data(b"RESERVED 1 10\r\n01234")
    assert conn.next_event() is p.NEED_DATA
    conn.receive_data(b"56789\r")
    assert conn.next_event() is p.NEED_DATA
    conn.receive_data(b"\n")
    assert conn.next_event() == p.Reserved(1, b"0123456789")


def test_large_binary_body_round_trips() -> None:
    body = bytes(range(256)) * 256  # 65,536 bytes including many b"\r\n"
    conn = p.Connection()
    conn.send(p.Reserve())
    assert feed(conn, b"RESERVED 1 %d\r\n%b\r\n" % (len(body), body), bytewise=False) == [
        p.Reserved(1, body)
    ]


# ---- validation: nothing malformed reaches the wire


@pytest.mark.parametrize(
    ("command", "argument"),
    [
        (p.Put(b"x", priority=-1), "priority"),
        (p.Put(b"x", priority=2**32), "priority"),
        (p.Put(b"x", delay=2**32), "delay"),
        (p.Put(b"x", ttr=-5), "ttr"),
        (p.Put(b"x", ttr=True), "ttr"),
        (p.Put("text"), "body"),  # type: ignore[arg-type]
        (p.ReserveWithTimeout(-1), "timeout"),  # negative means forever in 1.12 (B7)
        (p.ReserveWithTimeout(2**31), "timeout"),
        (p.Delete(-1), "id"),
        (p.Delete(2**64), "id"),
        (p.Release(1, delay=1.5), "delay"),  # type: ignore[arg-type]
        (p.PauseTube("t", 2**32), "delay"),
        (p.Kick(-1), "bound"),
        (p.Use(""), "tube"),
        (p.Use("x" * 201), "tube"),
        (p.Use("-leading-dash"), "tube"),
        (p.Watch("has space"), "tube"),
        (p.Watch("star*"), "tube"),
        (p.Watch("colon:"), "tube"),
        (p.Watch("naïve"), "tube"),
        (p.Watch("new\r\nline"), "tube"),
        (p.StatsTube("a,b"), "tube"),
    ],
    ids=lambda v: repr(v)[:40],
)
def test_bad_arguments_are_refused_naming_the_argument(command: p.Command, argument: str) -> None:
    conn = p.Connection()
    with pytest.raises(LocalProtocolError, match=argument):
        conn.send(command)
    # nothing was committed, and the connection is still usable
    assert conn.pending == 0
    assert conn.send(p.Delete(1)) == b"delete 1\r\n"


def test_longest_legal_tube_name_is_accepted() -> None:
    name = "a" * 200
    wire = p.Connection().send(p.PauseTube(name, 2**32 - 1))
    assert len(wire) <= 224  # beanstalkd's line buffer


def test_all_legal_tube_characters() -> None:
    name = "AZaz09-+/;.$_()"
    assert p.Connection().send(p.Watch(name)) == b"watch " + name.encode() + b"\r\n"


def test_body_over_max_job_size_is_refused() -> None:
    conn = p.Connection(max_job_size=10)
    assert conn.send(p.Put(b"x" * 10)).startswith(b"put")
    with pytest.raises(LocalProtocolError, match="max-job-size is 10"):
        conn.send(p.Put(b"x" * 11))
    assert conn.pending == 1


def test_send_many_is_all_or_nothing() -> None:
    conn = p.Connection()
    with pytest.raises(LocalProtocolError, match="tube"):
        conn.send_many([p.Delete(1), p.Use("bad name")])
    assert conn.pending == 0


def test_quit_expects_no_reply_and_closes() -> None:
    conn = p.Connection()
    conn.send(p.Quit())
    assert conn.pending == 0
    with pytest.raises(LocalProtocolError, match="closed"):
        conn.send(p.Stats())
    with pytest.raises(LocalProtocolError, match="quit must be the last"):
        p.Connection().send_many([p.Quit(), p.Stats()])


# ---- remote errors poison the connection


@pytest.mark.parametrize(
    ("command", "data", "match"),
    [
        (p.Delete(1), b"WHAT\r\n", "unknown reply"),
        (p.Delete(1), b"INSERTED 5\r\n", "not a possible reply"),
        (p.Put(b"x"), b"DELETED\r\n", "not a possible reply"),
        (p.Peek(1), b"RESERVED 1 1\r\nx\r\n", "not a possible reply"),
        (p.Delete(1), b"OK 4\r\n---\n\r\n", "no OK reply"),
        (p.Put(b"x"), b"INSERTED -5\r\n", "unsigned"),
        (p.Put(b"x"), b"INSERTED +5\r\n", "unsigned"),
        (p.Put(b"x"), b"INSERTED 5 6\r\n", "unknown reply"),
        (p.Reserve(), b"RESERVED 1 2\r\nabcd\r\n", "not followed by CRLF"),
        (p.Reserve(), b"RESERVED 1\r\n", "two arguments"),
        (p.Stats(), ok(b"--\nx: 1\n"), "start with"),
        (p.Stats(), ok(b"---\nnot a pair\n"), "key: value"),
        (p.StatsJob(1), ok(b"---\nid: 1\n"), "missing key"),
        (p.StatsJob(1), ok(JOB_STATS_BODY.replace(b"pri: 1024", b"pri: high")), "pri"),
        (p.ListTubes(), ok(b"---\nnope\n"), "'- name'"),
        (p.Delete(1), b"X" * 300, "too long"),
    ],
    ids=lambda v: repr(v)[:40],
)
def test_garbage_raises_remote_error_and_poisons(
    command: p.Command, data: bytes, match: str
) -> None:
    conn = p.Connection()
    conn.send(command)
    conn.receive_data(data)
    with pytest.raises(RemoteProtocolError, match=match):
        conn.next_event()
    assert conn.poisoned
    with pytest.raises(RemoteProtocolError, match="poisoned"):
        conn.next_event()
    with pytest.raises(RemoteProtocolError, match="poisoned"):
        conn.send(p.Stats())
    with pytest.raises(RemoteProtocolError, match="poisoned"):
        conn.receive_data(b"more")


def test_unsolicited_data_is_a_remote_error() -> None:
    conn = p.Connection()
    conn.receive_data(b"RESERVED 1 1\r\nx\r\n")  # e.g. a reserve we gave up on
    with pytest.raises(RemoteProtocolError, match="unsolicited"):
        conn.next_event()


def test_eof_mid_body_is_a_remote_error() -> None:
    conn = p.Connection()
    conn.send(p.Reserve())
    conn.receive_data(b"RESERVED 1 10\r\n01234")
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="closed the connection"):
        conn.next_event()


def test_eof_with_nothing_owed_is_a_clean_close() -> None:
    conn = p.Connection()
    conn.receive_data(b"")
    assert conn.next_event() is p.NEED_DATA
    with pytest.raises(LocalProtocolError, match="closed"):
        conn.send(p.Stats())


# ---- properties


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]  # b"" is EOF


@settings(max_examples=300, deadline=None)
@given(
    picks=st.lists(st.integers(0, len(REPLIES) - 1), min_size=1, max_size=20),
    cuts=st.lists(st.integers(0, 10_000), max_size=30),
)
def test_any_chunking_of_a_valid_stream_gives_the_same_replies(
    picks: list[int], cuts: list[int]
) -> None:
    chosen = [REPLIES[i] for i in picks]
    conn = p.Connection()
    conn.send_many([command for command, _, _ in chosen])
    stream = b"".join(data for _, data, _ in chosen)
    replies: list[p.Reply] = []
    for chunk in _split(stream, cuts):
        replies += feed(conn, chunk, bytewise=False)
    assert replies == [expected for _, _, expected in chosen]
    assert conn.pending == 0


@settings(max_examples=300, deadline=None)
@given(
    body=st.binary(max_size=2000),
    cuts=st.lists(st.integers(0, 5000), max_size=10),
)
def test_any_body_round_trips_under_any_chunking(body: bytes, cuts: list[int]) -> None:
    conn = p.Connection()
    conn.send(p.Reserve())
    replies: list[p.Reply] = []
    for chunk in _split(b"RESERVED 42 %d\r\n%b\r\n" % (len(body), body), cuts):
        replies += feed(conn, chunk, bytewise=False)
    assert replies == [p.Reserved(42, body)]


@settings(max_examples=500, deadline=None)
@given(garbage=st.binary(min_size=1, max_size=400))
def test_random_garbage_yields_only_remote_errors(garbage: bytes) -> None:
    conn = p.Connection()
    conn.send_many([p.Reserve(), p.Stats(), p.Delete(1), p.ListTubes()])
    conn.receive_data(garbage)
    conn.receive_data(b"")  # and then the server hangs up
    try:
        for _ in range(5):
            conn.next_event()
    except RemoteProtocolError:
        assert conn.poisoned


def test_job_stats_with_negative_time_left() -> None:
    # A reserved job whose TTR expiry beanstalkd lost shows a negative time-left (B1).
    conn = p.Connection()
    conn.send(p.StatsJob(7))
    body = JOB_STATS_BODY.replace(b"time-left: 59", b"time-left: -4220")
    [stats] = feed(conn, ok(body), bytewise=False)
    assert isinstance(stats, p.JobStats)
    assert stats.time_left == -4220


def test_records_compare_and_hash_by_value_and_carry_no_dict() -> None:
    # Built with tubeworker.frozen: frozen to mypy, plain slotted dataclasses at run time
    # (five times cheaper to build), with a frozen dataclass's equality and hash.
    assert p.Delete(7) == p.Delete(7) != p.Delete(8)
    assert len({p.Delete(7), p.Delete(7), p.Reserved(7, b"x")}) == 2
    assert not hasattr(p.Reserved(7, b"x"), "__dict__")
