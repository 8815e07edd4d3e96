"""The admin commands as users run them: ``python -m tubeworker <command>`` in a subprocess
against a real beanstalkd, the broker's state read back with greenstalk (an independent
client). Every subprocess is bounded by a timeout; nothing waits by sleeping."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import greenstalk
import pytest

from tests.support.beanstalkd import BeanstalkdProcess, free_port
from tests.support.process import REPO
from tests.support.waiting import wait_until_sync
from tubeworker.admin_ops import EX_DATAERR, EX_NOINPUT, EX_PROTOCOL, EX_UNAVAILABLE, EX_USAGE
from tubeworker.envelope import encode_envelope

pytestmark = pytest.mark.slow

TIMEOUT = 30.0
TUBE = "admin-e2e"


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUBEWORKER_")}
    return {**env, "PYTHONPATH": str(REPO), **(extra or {})}


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tubeworker", *args]


def tw(
    *args: str, stdin: bytes | None = b"", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run ``tubeworker ARGS``; stdin is a pipe (not a terminal) holding ``stdin``."""
    return subprocess.run(
        command(*args),
        cwd=REPO,
        env=_env(env),
        input=stdin,
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )


def out(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stdout.decode()


def assert_one_line_error(
    result: subprocess.CompletedProcess[bytes], code: int, *words: str
) -> None:
    err = result.stderr.decode()
    assert result.returncode == code, (result.returncode, err)
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    assert err.startswith("tubeworker: ")
    for word in words:
        assert word in err, err


@pytest.fixture
def client(beanstalkd: BeanstalkdProcess) -> Iterator[greenstalk.Client]:
    with greenstalk.Client(
        (beanstalkd.host, beanstalkd.port), encoding=None, use=TUBE, watch=TUBE
    ) as c:
        yield c


def bury(client: greenstalk.Client, count: int) -> list[int]:
    """Put ``count`` jobs and bury them (as a worker does); their ids."""
    ids = [client.put(f"job {i}".encode()) for i in range(count)]
    for _ in ids:
        client.bury(client.reserve(timeout=0))
    return ids


def tube_counts(client: greenstalk.Client, tube: str = TUBE) -> dict[str, int]:
    stats = client.stats_tube(tube)
    return {
        key.removeprefix("current-jobs-"): int(value)
        for key, value in stats.items()
        if key.startswith("current-jobs-")
    }


def job_state(client: greenstalk.Client, job_id: int) -> str:
    try:
        return str(client.stats_job(job_id)["state"])
    except greenstalk.NotFoundError:
        return "deleted"


# --------------------------------------------------------------------------- put


def test_put_a_body_prints_its_id_with_default_priority_and_ttr(
    beanstalkd: BeanstalkdProcess, client: greenstalk.Client
) -> None:
    result = tw("put", TUBE, "hello world", "--server", beanstalkd.address)
    assert result.returncode == 0, result.stderr
    job_id = int(out(result))
    assert client.peek(job_id).body == b"hello world"
    stats = client.stats_job(job_id)
    assert (stats["tube"], stats["pri"], stats["ttr"], stats["state"]) == (
        TUBE,
        1024,
        60,
        "ready",
    )


def test_put_from_stdin_keeps_bytes_and_takes_human_durations(
    beanstalkd: BeanstalkdProcess, client: greenstalk.Client
) -> None:
    body = bytes(range(256)) + b"\r\n\x00 end"
    result = tw(
        "put",
        TUBE,
        "-",
        "--priority",
        "5",
        "--delay",
        "5m",
        "--ttr",
        "1500ms",  # rounded up: beanstalkd counts whole seconds
        "--server",
        beanstalkd.address,
        stdin=body,
    )
    assert result.returncode == 0, result.stderr
    job_id = int(out(result))
    assert client.peek(job_id).body == body
    stats = client.stats_job(job_id)
    assert (stats["pri"], stats["delay"], stats["ttr"], stats["state"]) == (5, 300, 2, "delayed")


def test_put_with_task_builds_the_envelope(
    beanstalkd: BeanstalkdProcess, client: greenstalk.Client
) -> None:
    payload = {"user_id": 42, "tags": ["a"]}
    result = tw(
        "put",
        TUBE,
        "--task",
        "send-welcome",
        "--payload",
        json.dumps(payload),
        "--server",
        beanstalkd.address,
    )
    assert result.returncode == 0, result.stderr
    body = client.peek(int(out(result))).body
    assert body == encode_envelope("send-welcome", payload)
    assert json.loads(body) == {"task": "send-welcome", "payload": payload}


def test_servers_default_to_the_environment(
    beanstalkd: BeanstalkdProcess, client: greenstalk.Client
) -> None:
    env = {"TUBEWORKER_SERVERS": f"{beanstalkd.address},127.0.0.1:{free_port()}"}
    result = tw("put", TUBE, "from env", env=env)  # one server: the first of the list
    assert result.returncode == 0, result.stderr
    assert client.peek(int(out(result))).body == b"from env"


# --------------------------------------------------------------------------- stats


def table_row(text: str, tube: str) -> list[str]:
    rows = [line.split() for line in text.splitlines() if line.split()[:1] == [tube]]
    assert len(rows) == 1, text
    return rows[0]


def test_stats_shows_the_server_and_a_row_per_tube(
    beanstalkd: BeanstalkdProcess, client: greenstalk.Client
) -> None:
    bury(client, 2)
    client.put(b"ready", priority=0)
    client.put(b"later", delay=3600)
    client.use("other-tube")
    client.put(b"x")
    result = tw("stats", "--server", beanstalkd.address)
    assert result.returncode == 0, result.stderr
    text = out(result)
    assert f"server {beanstalkd.address}: beanstalkd" in text
    header = next(line for line in text.splitlines() if line.startswith("TUBE"))
    assert header.split() == [
        "TUBE",
        "READY",
        "RESERVED",
        "DELAYED",
        "BURIED",
        "URGENT",
        "WAITING",
        "PAUSED",
        "TOTAL",
    ]
    # ready reserved delayed buried urgent waiting paused total
    assert table_row(text, TUBE)[1:] == ["1", "0", "1", "2", "1", "0", "-", "4"]
    assert table_row(text, "other-tube")[1:] == ["1", "0", "0", "0", "0", "0", "-", "1"]
    # The test's client put and reserved: one producer, one worker (not "1 workers")
    assert "(1 producer, 1 worker, 0 waiting)" in text
    # beanstalkd's own health: this one runs without a binlog
    assert "binlog: off (jobs live in memory only: a restart loses them)" in text
    assert "0 job timeouts (TTRs run out) since start; CPU " in text

    only = tw("stats", "other-tube", "--server", beanstalkd.address)
    assert only.returncode == 0, only.stderr
    assert TUBE not in out(only)
    assert "other-tube" in out(only)


def test_stats_json(beanstalkd: BeanstalkdProcess, client: greenstalk.Client) -> None:
    bury(client, 1)
    client.put(b"a")
    result = tw("stats", TUBE, "--json", "--server", beanstalkd.address)
    assert result.returncode == 0, result.stderr
    document = json.loads(out(result))
    [server] = document["servers"]
    assert server["address"] == beanstalkd.address
    assert server["error"] is None
    assert server["server"]["current_jobs_buried"] == 1
    assert server["server"]["max_job_size"] == 65535
    [tube] = server["tubes"]
    expected = tube_counts(client)
    assert tube["name"] == TUBE
    assert tube["current_jobs_ready"] == expected["ready"] == 1
    assert tube["current_jobs_buried"] == expected["buried"] == 1


def test_stats_of_a_missing_tube_is_not_found(beanstalkd: BeanstalkdProcess) -> None:
    result = tw("stats", "no-such-tube", "--server", beanstalkd.address)
    assert_one_line_error(result, 66, "no-such-tube", "not found")
    assert out(result) == ""  # no summary, no empty table before the error


def test_stats_asks_every_server_and_says_which_one_is_down(
    beanstalkd: BeanstalkdProcess, client: greenstalk.Client
) -> None:
    client.put(b"x")
    down = f"127.0.0.1:{free_port()}"
    with BeanstalkdProcess() as second:
        result = tw(
            "stats",
            "--server",
            beanstalkd.address,
            "--server",
            second.address,
            "--server",
            down,
        )
    assert_one_line_error(result, 69, down, "connection refused")
    text = out(result)
    assert f"server {beanstalkd.address}:" in text
    assert f"server {second.address}:" in text
    assert table_row(text, TUBE)[1] == "1"


RECORDS = f"tubeworker.buried.{TUBE}"  # burial records: tubeworker's own tube
TOKENS = "tubeworker.limit.partner"  # fleet-limit tokens: another of its own


def put_internal_jobs(client: greenstalk.Client) -> None:
    """5 jobs in tubeworker's own tubes (3 records, 2 tokens), beside the test's work."""
    for tube, count in ((RECORDS, 3), (TOKENS, 2)):
        client.use(tube)
        for n in range(count):
            client.put(f"{tube} {n}".encode())
    client.use(TUBE)


def summary_counts(text: str) -> list[int]:
    """ready, urgent, reserved, delayed, buried, put since start: from the jobs line."""
    line = next(line for line in text.splitlines() if line.startswith("  jobs: "))
    return [
        int(word)
        for word in re.findall(r"\b(\d+) (?:ready|urgent|reserved|delayed|buried|put)", line)
    ]


def test_stats_leaves_out_tubeworkers_own_tubes_unless_all(
    beanstalkd: BeanstalkdProcess, client: greenstalk.Client
) -> None:
    # Given 2 ready and 1 buried job of work, and 5 jobs in tubeworker's own tubes
    client.put(b"a")
    client.put(b"b")
    bury(client, 1)
    put_internal_jobs(client)

    # When stats is asked: then its own tubes are neither listed nor counted
    result = tw("stats", "--server", beanstalkd.address)
    assert result.returncode == 0, result.stderr
    text = out(result)
    assert "tubeworker." not in text.split("TUBE ", 1)[1]
    assert summary_counts(text) == [2, 0, 0, 0, 1, 3]
    assert "not counted above: tubeworker's own 2 tubes (5 jobs; --all" in text

    # With --all: listed, and counted as the server counts them
    every = tw("stats", "--all", "--server", beanstalkd.address)
    assert every.returncode == 0, every.stderr
    assert table_row(out(every), RECORDS)[1] == "3"
    assert table_row(out(every), TOKENS)[1] == "2"
    assert summary_counts(out(every)) == [7, 0, 0, 0, 1, 8]
    assert "not counted" not in out(every)

    # Named: shown (still not counted in the summary)
    named = tw("stats", RECORDS, "--server", beanstalkd.address)
    assert table_row(out(named), RECORDS)[1] == "3"

    # JSON: the same tubes and counts, and which tubes were left out
    document = json.loads(out(tw("stats", "--json", "--server", beanstalkd.address)))
    [server] = document["servers"]
    assert {t["name"] for t in server["tubes"]} == {"default", TUBE}
    assert server["server"]["current_jobs_ready"] == 2
    assert sorted(server["hidden_tubes"]) == sorted([RECORDS, TOKENS])


def _read_until(fd: int, needle: bytes, count: int, deadline: float) -> bytes:
    """Read ``fd`` until ``needle`` was seen ``count`` times (or fail at the deadline)."""
    seen = b""
    while seen.count(needle) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out waiting for {count} x {needle!r}; got {seen[-500:]!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # a pty's reader gets EIO once the child is gone
                chunk = b""
            assert chunk, f"output ended before {count} x {needle!r}: {seen[-500:]!r}"
            seen += chunk
    return seen


def _interrupt(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=TIMEOUT)


def _sigint_default() -> None:
    # Under a shell that ignores SIGINT in background jobs the child would inherit that.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def spawned(
    *args: str, stdin: int = subprocess.DEVNULL, stdout: int = subprocess.PIPE
) -> Iterator[subprocess.Popen[bytes]]:
    """``tubeworker ARGS`` running; killed by PID if still running at the end."""
    with subprocess.Popen(
        command(*args),
        cwd=REPO,
        env=_env(),
        stdin=stdin,
        stdout=stdout,
        stderr=subprocess.PIPE,
        preexec_fn=_sigint_default,
    ) as proc:
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=TIMEOUT)


def test_stats_watch_repeats_plain_tables_and_ctrl_c_exits_0(
    beanstalkd: BeanstalkdProcess, client: greenstalk.Client
) -> None:
    client.put(b"x")
    with spawned("stats", "--watch", "0.1", "--server", beanstalkd.address) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        seen = _read_until(proc.stdout.fileno(), b"TUBE ", 2, time.monotonic() + TIMEOUT)
        _interrupt(proc)
        err = proc.stderr.read().decode()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert b"\x1b[" not in seen  # not a terminal: no screen control
    frames = seen.decode().split("tubeworker stats: every 0.1s")
    assert frames[0] == ""
    assert table_row(frames[1], TUBE)[1] == "1"


def test_stats_watch_on_a_terminal_redraws_in_place(
    beanstalkd: BeanstalkdProcess, client: greenstalk.Client
) -> None:
    client.put(b"x")
    master, slave = pty.openpty()
    try:
        with spawned(
            "stats", "--watch", "100ms", "--server", beanstalkd.address, stdout=slave
        ) as proc:
            os.close(slave)
            assert proc.stderr is not None
            seen = _read_until(master, b"\x1b[H\x1b[2J", 2, time.monotonic() + TIMEOUT)
            _interrupt(proc)
            err = proc.stderr.read().decode()
    finally:
        os.close(master)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert TUBE.encode() in seen


# --------------------------------------------------------------------------- peek


def test_peek_an_id_shows_stats_and_a_pretty_json_body(
    beanstalkd: BeanstalkdProcess, client: greenstalk.Client
) -> None:
    body = encode_envelope("send", {"user": 1})
    job_id = client.put(body, priority=7, ttr=90)
    result = tw("peek", str(job_id), "--server", beanstalkd.address)
    assert result.returncode == 0, result.stderr
    text = out(result)
    for line in (
        f"id: {job_id}",
        f"tube: {TUBE}",
        "state: ready",
        "priority: 7 (urgent)",
        "ttr: 1m30s",
        "counters: reserves 0, timeouts 0, releases 0, buries 0, kicks 0",
        'task: "send"',
        f"body: {len(body)} bytes, JSON",
    ):
        assert line in text.splitlines(), (line, text)
    assert '{\n  "task": "send",\n  "payload": {\n    "user": 1\n  }\n}' in text


def test_peek_text_escapes_control_characters(
    beanstalkd: BeanstalkdProcess, client: greenstalk.Client
) -> None:
    job_id = client.put(b"hello\x1b[2J world\r\n")
    result = tw("peek", str(job_id), "--server", beanstalkd.address)
    assert result.returncode == 0, result.stderr
    assert "hello\\x1b[2J world\\r\n" in out(result)
    assert b"\x1b" not in result.stdout


def test_peek_binary_is_a_hex_dump_and_raw_gives_the_bytes(
    beanstalkd: BeanstalkdProcess, client: greenstalk.Client
) -> None:
    body = b"\xff\xfe\x00\x01binary"
    job_id = client.put(body)
    result = tw("peek", str(job_id), "--server", beanstalkd.address)
    assert result.returncode == 0, result.stderr
    assert "body: 10 bytes, binary" in out(result)
    assert "00000000  ff fe 00 01 62 69 6e 61  72 79" in out(result)
    assert "|....binary|" in out(result)

    raw = tw("peek", str(job_id), "--raw", "--server", beanstalkd.address)
    assert raw.returncode == 0, raw.stderr
    assert raw.stdout == body


def test_peek_a_large_body_is_truncated_with_a_note(
    beanstalkd: BeanstalkdProcess, client: greenstalk.Client
) -> None:
    job_id = client.put(b"x" * 60_000)
    result = tw("peek", str(job_id), "--server", beanstalkd.address)
    assert result.returncode == 0, result.stderr
    assert "truncated: showing 4096 of 60000 bytes" in out(result)
    assert len(result.stdout) < 5000


def test_peek_a_tube_by_state(beanstalkd: BeanstalkdProcess, client: greenstalk.Client) -> None:
    [buried] = bury(client, 1)
    delayed = client.put(b"later", delay=3600)
    ready = client.put(b"now")
    for state, job_id in (("buried", buried), ("delayed", delayed), ("ready", ready)):
        result = tw("peek", TUBE, state, "--server", beanstalkd.address)
        assert result.returncode == 0, result.stderr
        assert f"id: {job_id}\n" in out(result)
        assert f"state: {state}\n" in out(result)
    delayed_text = out(tw("peek", TUBE, "delayed", "--server", beanstalkd.address))
    assert re.search(r"^delay: 1h \(ready in (1h|59m\d+s)\)$", delayed_text, re.MULTILINE)


def test_peek_errors(beanstalkd: BeanstalkdProcess, client: greenstalk.Client) -> None:
    client.put(b"x")
    assert_one_line_error(tw("peek", "999", "--server", beanstalkd.address), 66, "job 999")
    assert_one_line_error(
        tw("peek", TUBE, "buried", "--server", beanstalkd.address), 66, "no buried job"
    )
    assert_one_line_error(
        tw("peek", "no-such-tube", "ready", "--server", beanstalkd.address), 66, "not found"
    )
    assert_one_line_error(tw("peek", TUBE, "--server", beanstalkd.address), 64, "state")


# --------------------------------------------------------------------------- kick, delete


def test_kick_n_then_all_buried(beanstalkd: BeanstalkdProcess, client: greenstalk.Client) -> None:
    bury(client, 3)
    delayed = client.put(b"later", delay=3600)
    result = tw("kick", TUBE, "2", "--server", beanstalkd.address)
    assert result.returncode == 0, result.stderr
    assert out(result) == f"kicked 2 buried jobs of tube {TUBE!r}\n"
    assert tube_counts(client)["buried"] == 1
    assert tube_counts(client)["ready"] == 2

    result = tw("kick", TUBE, "--server", beanstalkd.address)
    assert out(result) == f"kicked 1 buried job of tube {TUBE!r}\n"
    # No buried job left: beanstalkd's kick would move the delayed job, ours does not.
    result = tw("kick", TUBE, "--server", beanstalkd.address)
    assert result.returncode == 0, result.stderr
    assert out(result).startswith("kicked 0 jobs")
    assert job_state(client, delayed) == "delayed"


def test_kick_job(beanstalkd: BeanstalkdProcess, client: greenstalk.Client) -> None:
    first, second = bury(client, 2)
    result = tw("kick-job", str(second), "--server", beanstalkd.address)
    assert result.returncode == 0, result.stderr
    assert (job_state(client, first), job_state(client, second)) == ("buried", "ready")
    assert_one_line_error(
        tw("kick-job", str(second), "--server", beanstalkd.address), 66, str(second)
    )


def test_delete_ids_reports_each_missing_one(
    beanstalkd: BeanstalkdProcess, client: greenstalk.Client
) -> None:
    first = client.put(b"a")
    second = client.put(b"b")
    result = tw("delete", str(first), "9999", str(second), "--server", beanstalkd.address)
    assert_one_line_error(result, 66, "job 9999 not found")
    assert out(result) == f"deleted job {first}\ndeleted job {second}\n"
    assert (job_state(client, first), job_state(client, second)) == ("deleted", "deleted")


def test_delete_buried_refuses_without_yes_when_stdin_is_not_a_terminal(
    beanstalkd: BeanstalkdProcess, client: greenstalk.Client
) -> None:
    ids = bury(client, 2)
    result = tw("delete", "--buried", TUBE, "--server", beanstalkd.address, stdin=b"y\n")
    assert_one_line_error(result, 64, "--yes", "2 buried jobs")
    assert [job_state(client, i) for i in ids] == ["buried", "buried"]


def test_delete_buried_with_yes_deletes_only_buried_jobs(
    beanstalkd: BeanstalkdProcess, client: greenstalk.Client
) -> None:
    ids = bury(client, 3)
    ready = client.put(b"keep me")
    result = tw("delete", "--buried", TUBE, "--yes", "--server", beanstalkd.address)
    assert result.returncode == 0, result.stderr
    assert out(result) == f"deleted 3 buried jobs of tube {TUBE!r}\n"
    assert [job_state(client, i) for i in ids] == ["deleted"] * 3
    assert job_state(client, ready) == "ready"


def _delete_on_a_terminal(server: BeanstalkdProcess, answer: bytes) -> tuple[int, str]:
    master, slave = pty.openpty()
    try:
        with spawned("delete", "--buried", TUBE, "--server", server.address, stdin=slave) as proc:
            os.close(slave)
            assert proc.stderr is not None
            _read_until(proc.stderr.fileno(), b"[y/N] ", 1, time.monotonic() + TIMEOUT)
            os.write(master, answer)
            stdout, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        os.close(master)
    return proc.returncode, stdout.decode()


def test_delete_buried_asks_on_a_terminal(
    beanstalkd: BeanstalkdProcess, client: greenstalk.Client
) -> None:
    ids = bury(client, 2)
    code, _ = _delete_on_a_terminal(beanstalkd, b"n\n")
    assert code == 1
    assert [job_state(client, i) for i in ids] == ["buried", "buried"]
    code, stdout = _delete_on_a_terminal(beanstalkd, b"y\n")
    assert code == 0
    assert stdout == f"deleted 2 buried jobs of tube {TUBE!r}\n"
    assert [job_state(client, i) for i in ids] == ["deleted", "deleted"]


# --------------------------------------------------------------------------- pause


def test_pause_list_and_resume(beanstalkd: BeanstalkdProcess, client: greenstalk.Client) -> None:
    client.put(b"x")  # a tube exists while it has jobs, users or watchers
    result = tw("pause", TUBE, "1h", "--server", beanstalkd.address)
    assert result.returncode == 0, result.stderr
    assert out(result) == f"paused tube {TUBE!r} for 1h (3600 s)\n"
    assert int(client.stats_tube(TUBE)["pause"]) == 3600

    listed = tw("pause", "--list", "--server", beanstalkd.address)
    assert listed.returncode == 0, listed.stderr
    lines = out(listed).splitlines()
    assert lines[0].split() == ["TUBE", "PAUSED", "FOR", "TIME", "LEFT"]
    assert lines[1].split()[:2] == [TUBE, "1h"]
    assert len(lines) == 2

    resumed = tw("pause", TUBE, "0", "--server", beanstalkd.address)
    assert out(resumed) == f"resumed tube {TUBE!r}\n"
    assert int(client.stats_tube(TUBE)["pause-time-left"]) == 0
    assert out(tw("pause", "--list", "--server", beanstalkd.address)) == "no paused tubes\n"


def test_pause_list_leaves_out_tubeworkers_own_tubes_unless_all(
    beanstalkd: BeanstalkdProcess, client: greenstalk.Client
) -> None:
    client.put(b"x")
    put_internal_jobs(client)
    for tube in (TUBE, TOKENS):
        client.pause_tube(tube, 3600)
    listed = tw("pause", "--list", "--server", beanstalkd.address)
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in out(listed).splitlines()[1:]] == [TUBE]
    every = tw("pause", "--list", "--all", "--server", beanstalkd.address)
    assert [line.split()[0] for line in out(every).splitlines()[1:]] == [TUBE, TOKENS]


def test_pause_errors(beanstalkd: BeanstalkdProcess) -> None:
    assert_one_line_error(
        tw("pause", "no-such-tube", "5m", "--server", beanstalkd.address), 66, "not found"
    )
    assert_one_line_error(
        tw("pause", "default", "soon", "--server", beanstalkd.address), 65, "'soon'"
    )


# --------------------------------------------------------------------------- error paths


@pytest.mark.parametrize(
    "command",
    [
        ["stats"],
        ["peek", "1"],
        ["put", TUBE, "x"],
        ["kick", TUBE],
        ["kick-job", "1"],
        ["delete", "1"],
        ["delete", "--buried", TUBE, "--yes"],
        ["pause", TUBE, "5m"],
        ["pause", "--list"],
    ],
)
def test_server_down_is_one_line_and_exit_69(command: list[str]) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    result = tw(*command, "--server", address)
    assert_one_line_error(result, 69, address, "connection refused")


def test_bad_durations_are_data_errors(beanstalkd: BeanstalkdProcess) -> None:
    for value in ("5x", "-1s", "4294967296"):
        result = tw("put", TUBE, "x", f"--delay={value}", "--server", beanstalkd.address)
        assert_one_line_error(result, 65, "--delay", repr(value))


def test_a_body_over_max_job_size_is_refused_and_nothing_is_put(
    beanstalkd: BeanstalkdProcess, client: greenstalk.Client
) -> None:
    result = tw("put", TUBE, "-", "--server", beanstalkd.address, stdin=b"x" * 65_536)
    assert_one_line_error(result, 65, "too big", "65535")
    assert tube_counts(client)["ready"] == 0


def test_a_draining_server_is_unavailable(
    beanstalkd: BeanstalkdProcess, client: greenstalk.Client
) -> None:
    beanstalkd.enter_drain_mode()
    wait_until_sync(lambda: client.stats()["draining"] == "true", what="drain mode")
    result = tw("put", TUBE, "x", "--server", beanstalkd.address)
    assert_one_line_error(result, 69, "draining")


def test_usage_errors_are_exit_64(beanstalkd: BeanstalkdProcess) -> None:
    server = ["--server", beanstalkd.address]
    # What argparse finds: one line naming the command's --help, and 64 (not argparse's 2)
    assert_one_line_error(tw("peek", *server), 64, "required: ID|TUBE", "tubeworker peek --help")
    assert_one_line_error(tw("stats", "--bogus", *server), 64, "unrecognized arguments: --bogus")
    assert_one_line_error(tw("no-such-command"), 64, "invalid choice", "'tubeworker --help'")
    assert_one_line_error(tw("run", "--concurrency", "many"), 64, "--concurrency", "run --help")
    assert_one_line_error(tw("check", "--profile", "gpu"), 64, "invalid choice: 'gpu'")
    assert_one_line_error(tw("pause", "--all", TUBE, "5m", *server), 64, "--list")
    assert_one_line_error(tw("put", TUBE, *server), 64, "BODY")
    assert_one_line_error(tw("put", TUBE, "x", "--task", "t", *server), 64, "not both")
    assert_one_line_error(tw("delete", *server), 64, "--buried")
    assert_one_line_error(tw("pause", TUBE, *server), 64, "DURATION")
    two = [*server, "--server", f"127.0.0.1:{free_port()}"]
    assert_one_line_error(tw("delete", "1", *two), 64, "one server")


def test_put_help_says_which_server_of_several() -> None:
    result = tw("put", "--help")
    assert result.returncode == 0
    text = " ".join(out(result).split())
    assert "with several listed, the first is used" in text
    assert "TUBE the tube to put the job into" in text


def test_delete_buried_counts_servers_in_words(beanstalkd: BeanstalkdProcess) -> None:
    # Given buried jobs of the tube on one of two servers
    with (
        greenstalk.Client((beanstalkd.host, beanstalkd.port), use=TUBE, watch=TUBE) as client,
        BeanstalkdProcess() as second,
    ):
        bury(client, 2)
        servers = ["--server", beanstalkd.address, "--server", second.address]
        result = tw("delete", "--buried", TUBE, *servers)
    assert_one_line_error(result, 64, "2 buried jobs of tube 'admin-e2e' on 1 server without")


@contextlib.contextmanager
def not_beanstalkd() -> Iterator[str]:
    """A TCP server on loopback that answers every connection like a web server would; its
    address. Stopped (and its thread joined) on the way out."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    conn.recv(1024)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=TIMEOUT)
        listener.close()


def test_a_server_that_is_not_beanstalkd_is_exit_76_as_the_docs_say() -> None:
    with not_beanstalkd() as address:
        for command in (["stats"], ["put", TUBE, "x"], ["pause", "--list"]):
            result = tw(*command, "--server", address)
            assert_one_line_error(result, 76, address, "does not speak beanstalkd")
    readme = " ".join((REPO / "docs" / "admin.md").read_text(encoding="utf-8").split())
    admin = readme[readme.index("picks the server(s). Errors are one line") :][:400]
    for code in (EX_UNAVAILABLE, EX_DATAERR, EX_NOINPUT, EX_USAGE, EX_PROTOCOL):
        assert re.search(rf"\b{code} [a-z]", admin), (code, admin)
