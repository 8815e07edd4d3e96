"""The producer's spool against a real beanstalkd: jobs enqueued while the server is down
are spooled (the app keeps working) and delivered in order, once, when it is back; the
blocking producer's background thread and the Trio producer's flusher both do it; the
command line reads and flushes a spool left behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import greenstalk
import pytest
import trio

from tests.support.beanstalkd import BeanstalkdProcess, free_port
from tests.support.docs import block, run_code
from tests.support.tubes import payload_ns, put_count
from tests.support.waiting import wait_until, wait_until_sync
from tubeworker.producer import AsyncProducer, Producer

TUBE = "spooled"
SPOOL_COMMANDS = "tubeworker spool status /var/lib/myapp/tubeworker-spool.db"


def test_given_the_server_down_then_jobs_are_spooled_and_delivered_in_order_when_it_is_back(
    tmp_path: Path,
) -> None:
    port = free_port()
    with Producer(f"127.0.0.1:{port}", spool=tmp_path / "spool.db", flush_every=0.05) as app:
        receipts = [app.enqueue(TUBE, "t", {"n": n}) for n in range(50)]
        assert all(r.spooled for r in receipts)
        assert [r.spool_id for r in receipts] == sorted(r.spool_id for r in receipts)
        status = app.spool_status()
        assert status is not None
        assert status.jobs == 50
        with BeanstalkdProcess(port=port) as server:
            wait_until_sync(lambda: put_count(server, TUBE) == 50, what="the spool delivered")
            # Once it is empty, a job is put at once again, with its id.
            fresh = app.enqueue(TUBE, "t", {"n": 50})
            assert not fresh.spooled
            assert fresh > 0
            assert payload_ns(server, TUBE) == list(range(51))
        status = app.spool_status()
        assert status is not None
        assert status.jobs == 0


async def test_the_trio_producer_spools_and_its_flusher_delivers(tmp_path: Path) -> None:
    port = free_port()
    async with (
        AsyncProducer(f"127.0.0.1:{port}", spool=tmp_path / "spool.db", flush_every=0.05) as app,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(app.run_spool_flusher)
        receipts = [await app.enqueue(TUBE, "t", {"n": n}) for n in range(20)]
        assert all(r.spooled for r in receipts)
        with BeanstalkdProcess(port=port) as server:
            await wait_until(lambda: put_count(server, TUBE) == 20, what="the spool delivered")
            assert payload_ns(server, TUBE) == list(range(20))
        nursery.cancel_scope.cancel()


def test_a_spool_left_behind_is_read_and_flushed_from_the_command_line(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "spool.db"
    with Producer(f"127.0.0.1:{port}", spool=path, flush_every=3600) as app:
        for n in range(10):
            app.enqueue(TUBE, "t", {"n": n}, delay="10m")

    def tw(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tubeworker", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    status = json.loads(tw("spool", "status", str(path), "--json").stdout)
    assert status["jobs"] == 10
    assert status["oldest_age"] >= 0
    down = tw("spool", "flush", str(path), "--server", f"127.0.0.1:{port}")
    assert down.returncode == 69, down.stderr
    assert "Traceback" not in down.stderr
    with BeanstalkdProcess(port=port) as server:
        flushed = tw("spool", "flush", str(path), "--server", server.address)
        assert flushed.returncode == 0, flushed.stderr
        assert "delivered 10 jobs" in flushed.stdout
        with greenstalk.Client((server.host, server.port)) as client:
            stats = client.stats_tube(TUBE)
            assert int(stats["current-jobs-delayed"]) == 10  # the delay was kept
    assert "0 jobs waiting" in tw("spool", "status", str(path)).stdout
    assert tw("spool", "status", str(tmp_path / "nope.db")).returncode == 66


def test_the_docs_spool_example_and_commands_run_as_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/producing.md's spool block and its two commands, the spool file moved to the
    test's folder and `servers` a closed port, then a server there."""
    port = free_port()
    path = str(tmp_path / "tubeworker-spool.db")
    code = block("docs/producing.md", "from tubeworker.producer import Producer").code
    done = run_code(code.replace("/var/lib/myapp/tubeworker-spool.db", path),
                    servers=f"127.0.0.1:{port}")  # fmt: skip
    on_signup, producer = done["on_signup"], done["producer"]
    assert callable(on_signup)
    on_signup(42)
    assert "welcome mail spooled (1); sent when beanstalkd is back" in capsys.readouterr().out
    assert isinstance(producer, Producer)
    producer.close()  # (its flusher stops: the command line delivers)
    commands = block("docs/producing.md", SPOOL_COMMANDS).code
    status_line, flush_line = (
        line.split("#")[0].replace("/var/lib/myapp/tubeworker-spool.db", path).split()
        for line in commands.splitlines()
    )
    with BeanstalkdProcess(port=port) as server:
        flush_line[flush_line.index("--server") + 1] = server.address
        for argv in (status_line, flush_line):
            assert argv[0] == "tubeworker"
            done_cmd = subprocess.run(
                [sys.executable, "-m", "tubeworker", *argv[1:]],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert done_cmd.returncode == 0, done_cmd.stderr
        assert "delivered 1 jobs" in done_cmd.stdout
        with greenstalk.Client((server.host, server.port)) as client:
            assert int(client.stats_tube("emails")["current-jobs-ready"]) == 1
