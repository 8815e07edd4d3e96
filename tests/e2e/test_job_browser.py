"""The job browser as operators use it, against a real beanstalkd: `tubeworker jobs`
pages through a tube's jobs by state with their bodies, `move` takes them to another tube
keeping priority, delay, TTR and burial, `flush` empties tubes by pattern after a count,
and `tail` shows jobs as they arrive without taking them."""

from __future__ import annotations

import json
import subprocess
import sys

import greenstalk
import pytest

from tests.e2e.test_daemon_process import run_cli
from tests.support.beanstalkd import BeanstalkdProcess
from tests.support.process import REPO

pytestmark = pytest.mark.slow


def bury(client: greenstalk.Client, tube: str, bodies: list[str]) -> list[int]:
    client.use(tube)
    client.watch(tube)
    ids = []
    for body in bodies:
        client.put(body, priority=7)
        job = client.reserve(timeout=5)
        client.bury(job, priority=7)
        ids.append(job.id)
    client.ignore(tube)
    return ids


def listing(server: BeanstalkdProcess, *args: str) -> dict:
    done = run_cli("jobs", *args, "--json", "--server", server.address)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_jobs_lists_a_tube_by_state_a_page_at_a_time_with_bodies(
    beanstalkd: BeanstalkdProcess,
) -> None:
    with greenstalk.Client((beanstalkd.host, beanstalkd.port)) as client:
        for n in range(1200):
            client.use("browse" if n % 3 else "other")  # other tubes' ids in between
            client.put(json.dumps({"n": n, "note": "needle" if n == 700 else "hay"}))
        client.use("browse")
        client.put("later", delay=3600)
        buried = bury(client, "browse", ["bad-1", "bad-2"])  # (pri 7: its own put is reserved)
    first = listing(beanstalkd, "browse", "--state", "ready", "--limit", "100")
    assert len(first["jobs"]) == 100
    assert [j["state"] for j in first["jobs"]] == ["ready"] * 100
    assert json.loads(first["jobs"][0]["body"]) == {"n": 1, "note": "hay"}
    second = listing(beanstalkd, "browse", "--state", "ready", "--from", str(first["next_from"]),
                     "--limit", "100")  # fmt: skip
    assert second["jobs"][0]["id"] > first["jobs"][-1]["id"]
    assert listing(beanstalkd, "browse", "--grep", "needle")["jobs"][0]["body"].count("700") == 1
    delayed = listing(beanstalkd, "browse", "--state", "delayed")["jobs"]
    assert [(j["body"], j["time_left"] > 3000) for j in delayed] == [("later", True)]
    assert [j["id"] for j in listing(beanstalkd, "browse", "--state", "buried")["jobs"]] == buried
    everything = listing(beanstalkd, "browse", "--limit", "5000")
    assert len(everything["jobs"]) == 800 + 1 + 2
    assert everything["next_from"] is None
    table = run_cli("jobs", "browse", "--state", "buried", "--server", beanstalkd.address)
    assert "bad-1" in table.stdout
    assert "ids scanned" in table.stderr


def test_move_keeps_priority_delay_ttr_and_burial_and_asks_first(
    beanstalkd: BeanstalkdProcess,
) -> None:
    with greenstalk.Client((beanstalkd.host, beanstalkd.port)) as client:
        bury(client, "from", ["buried-one", "buried-two"])  # (first: bury reserves the head)
        client.use("from")
        client.put("ready-one", priority=3, ttr=77)
        client.put("delayed-one", delay=600)
    dry = run_cli("move", "from", "--to", "to", "--state", "buried", "--dry-run",
                  "--server", beanstalkd.address)  # fmt: skip
    assert "would move 2 jobs of 'from' to 'to'" in dry.stdout
    refused = run_cli("move", "from", "--to", "to", "--server", beanstalkd.address)
    assert refused.returncode == 64  # no terminal to ask, no --yes
    assert "pass --yes" in refused.stderr
    moved = run_cli("move", "from", "--to", "to", "--yes", "--server", beanstalkd.address)
    assert moved.returncode == 0, moved.stderr
    assert "moved 4 jobs of 'from' to 'to'" in moved.stdout
    with greenstalk.Client((beanstalkd.host, beanstalkd.port)) as client:
        stats = client.stats_tube("to")
        assert (stats["current-jobs-ready"], stats["current-jobs-delayed"]) == (1, 1)
        assert stats["current-jobs-buried"] == 2
        with pytest.raises(greenstalk.NotFoundError):  # emptied, so beanstalkd freed it
            client.stats_tube("from")
        client.use("to")
        ready = client.peek_ready()
        kept = client.stats_job(ready)
        assert (ready.body, kept["pri"], kept["ttr"]) == ("ready-one", 3, 77)
        later = client.stats_job(client.peek_delayed())
        assert 500 < int(later["time-left"]) <= 600
    kicked = run_cli("move", "to", "--to", "retry", "--state", "buried", "--kick", "--yes",
                     "--server", beanstalkd.address)  # fmt: skip
    assert kicked.returncode == 0, kicked.stderr
    with greenstalk.Client((beanstalkd.host, beanstalkd.port)) as client:
        assert int(client.stats_tube("retry")["current-jobs-ready"]) == 2


def test_flush_counts_then_deletes_by_pattern(beanstalkd: BeanstalkdProcess) -> None:
    with greenstalk.Client((beanstalkd.host, beanstalkd.port)) as client:
        bury(client, "tenant-a", ["x", "y"])
        bury(client, "tenant-b", ["z"])
        bury(client, "keep-me", ["k"])
        client.use("tenant-a")
        client.put("ready stays")
    dry = run_cli("flush", "tenant-*", "--dry-run", "--server", beanstalkd.address)
    assert dry.returncode == 0, dry.stderr
    assert "would delete 3 jobs (buried) from 2 tubes matching 'tenant-*'" in dry.stdout
    done = run_cli("flush", "tenant-*", "--yes", "--server", beanstalkd.address)
    assert "deleted 3 jobs from 2 tubes" in done.stdout
    with greenstalk.Client((beanstalkd.host, beanstalkd.port)) as client:
        assert int(client.stats_tube("tenant-a")["current-jobs-ready"]) == 1
        assert int(client.stats_tube("keep-me")["current-jobs-buried"]) == 1
    nothing = run_cli("flush", "nobody-*", "--yes", "--server", beanstalkd.address)
    assert nothing.returncode == 66


def test_tail_shows_new_jobs_without_taking_them_and_take_takes(
    beanstalkd: BeanstalkdProcess,
) -> None:
    with greenstalk.Client((beanstalkd.host, beanstalkd.port), use="tailed") as client:
        client.put("before: not shown")
        watcher = subprocess.Popen(
            [sys.executable, "-m", "tubeworker", "tail", "tailed", "--count", "2",
             "--server", beanstalkd.address],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert watcher.stderr is not None
            assert "watching 'tailed' from job" in watcher.stderr.readline()  # it has started
            client.put("first new")
            client.put("second new")
            out, err = watcher.communicate(timeout=30)
        finally:
            watcher.kill()
            watcher.wait(timeout=10)
        assert watcher.returncode == 0, err
        assert [line.split("\t")[2] for line in out.splitlines()] == ["first new", "second new"]
        assert int(client.stats_tube("tailed")["current-jobs-ready"]) == 3  # none taken
        taken = run_cli("tail", "tailed", "--take", "--count", "3", "--server", beanstalkd.address)
        assert taken.returncode == 0, taken.stderr
        assert "DELETED" in taken.stderr
        assert int(client.stats_tube("tailed")["current-jobs-ready"]) == 0
