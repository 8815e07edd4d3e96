"""job.put() as users run it: `tubeworker run` in a subprocess with a real config of two
servers and the default logging, real beanstalkd servers, handlers that put follow-up
jobs. A compute-profile (sync) handler puts from its worker process, past a server that is
down; an io handler's put fails over when its own server stops taking jobs (drain mode,
SIGUSR1 by PID: the lane's connection stays up, so the handler keeps running)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import greenstalk
import pytest

from tests.e2e.test_daemon_process import run_cli
from tests.support.beanstalkd import BeanstalkdProcess, free_port
from tests.support.process import DaemonProcess
from tests.support.waiting import wait_until_sync
from tubeworker.envelope import encode_envelope

pytestmark = pytest.mark.slow

FOLLOWUPS = "producer-followups"


def write_config(path: Path, servers: list[str], pools: list[dict[str, object]]) -> Path:
    lines = [
        "[worker]",
        f"servers = {json.dumps(servers)}",
        "drain_timeout = 10",
        "[handlers]",
        '"producer.crunch" = "tests.e2e.handlers:crunch_and_put"',
        '"producer.put-when-released" = "tests.e2e.handlers:put_when_released"',
        '"producer.followup" = "tests.e2e.handlers:record_followup_pid"',
    ]
    for pool in pools:
        lines.append("[[pool]]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in pool.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def put(server: BeanstalkdProcess, tube: str, task: str, payload: object) -> int:
    with greenstalk.Client((server.host, server.port), encoding=None, use=tube) as client:
        return client.put(encode_envelope(task, payload), ttr=60)


def total_jobs(server: BeanstalkdProcess, tube: str) -> int:
    with greenstalk.Client((server.host, server.port)) as client:
        try:
            return int(client.stats_tube(tube)["total-jobs"])
        except greenstalk.NotFoundError:
            return 0


def start(daemon: DaemonProcess, daemons: list[DaemonProcess]) -> DaemonProcess:
    daemons.append(daemon.start())
    daemon.wait_ready(timeout=30)
    return daemon


def stop(daemon: DaemonProcess) -> None:
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=30) == 0
    stderr = daemon.stderr.read_text()
    assert "Traceback" not in stderr, stderr


def test_given_a_compute_handler_that_puts_then_the_follow_up_is_processed(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    # The daemon's servers: one down (nothing listens there), then the real one. The
    # pools read the real one only; follow-ups may go to any of the daemon's servers.
    down = f"127.0.0.1:{free_port()}"
    config = write_config(
        tmp_path / "worker.toml",
        [down, beanstalkd.address],
        [
            {
                "name": "thumbnails",
                "tubes": ["producer-compute"],
                "profile": "compute",
                "concurrency": 2,
                "servers": [beanstalkd.address],
            },
            {"name": "followups", "tubes": [FOLLOWUPS], "servers": [beanstalkd.address]},
        ],
    )
    # The default logging (what `tubeworker run` does on its own, not a test's choice).
    daemon = start(DaemonProcess(config, tmp_path, env={"TUBEWORKER_LOG_FORMAT": "auto"}), daemons)
    for n in range(3):
        put(beanstalkd, "producer-compute", "producer.crunch", {"n": n, "next": FOLLOWUPS})

    def followed_up() -> bool:
        assert daemon.proc is not None
        assert daemon.proc.poll() is None, daemon.stderr.read_text()
        return set(daemon.runs("followup")) == {0, 1, 2}

    wait_until_sync(followed_up, timeout=60, what="every follow-up job processed")
    assert daemon.runs("end") == {0: 1, 1: 1, 2: 1}  # each compute job ran once
    put_by = set(daemon.runs("put-by"))
    assert put_by
    assert daemon.pid not in put_by  # put from the worker processes
    assert total_jobs(beanstalkd, FOLLOWUPS) == 3  # past the server that is down
    output = daemon.stdout.read_text()
    assert "released" not in output, output  # no attempt failed
    assert "buried" not in output, output
    stop(daemon)


def test_given_an_io_handlers_server_stops_taking_jobs_then_its_put_fails_over(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    with BeanstalkdProcess() as other:
        config = write_config(
            tmp_path / "worker.toml",
            [beanstalkd.address, other.address],
            [{"name": "io", "tubes": ["producer-io", FOLLOWUPS], "concurrency": 4}],
        )
        daemon = start(
            DaemonProcess(config, tmp_path, env={"TUBEWORKER_LOG_FORMAT": "auto"}), daemons
        )
        release = tmp_path / "release"
        payload = {"n": 7, "release": str(release), "next": FOLLOWUPS}
        put(beanstalkd, "producer-io", "producer.put-when-released", payload)
        wait_until_sync(lambda: 7 in daemon.runs("start"), timeout=30, what="the handler")

        # Its own server now refuses every put (DRAINING); reserve and delete still work.
        beanstalkd.enter_drain_mode()
        with greenstalk.Client((beanstalkd.host, beanstalkd.port)) as client:
            wait_until_sync(lambda: client.stats()["draining"] == "true", what="drain mode")
        release.touch()

        wait_until_sync(lambda: 7 in daemon.runs("followup"), timeout=30, what="the follow-up")
        assert total_jobs(other, FOLLOWUPS) == 1  # stored on the other server...
        assert total_jobs(beanstalkd, FOLLOWUPS) == 0  # ...not on the draining one
        warnings = [e for e in daemon.events() if e.get("event") == "put not stored on a server"]
        assert [(e["server"], e["level"]) for e in warnings] == [(beanstalkd.address, "warning")]
        assert "is draining" in warnings[0]["reason"]
        wait_until_sync(
            lambda: (
                total_jobs(beanstalkd, "producer-io") == 1
                and _current(beanstalkd, "producer-io") == 0
            ),
            what="the original job deleted",
        )
        stop(daemon)


def _current(server: BeanstalkdProcess, tube: str) -> int:
    with greenstalk.Client((server.host, server.port)) as client:
        stats = client.stats_tube(tube)
    return sum(
        int(v)
        for k, v in stats.items()
        if k.startswith("current-jobs-") and k != "current-jobs-urgent"
    )


def test_given_a_spool_when_no_server_stores_a_follow_up_then_it_waits_and_arrives(
    beanstalkd_binlog: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    """[worker] spool: the only server drains (SIGUSR1: every put refused) while handlers
    put follow-ups; each handler goes on (its job done), the follow-ups wait in the spool,
    and arrive once each when the server is back (restarted on its binlog)."""
    server = beanstalkd_binlog
    release = tmp_path / "release"
    config = write_config(
        tmp_path / "w.toml",
        [server.address],
        [{"tubes": ["work", "next"], "concurrency": 5}],
    )
    config.write_text(
        config.read_text().replace(
            "drain_timeout = 10\n", f'drain_timeout = 10\nspool = "{tmp_path / "spool.db"}"\n'
        )
    )
    daemon = start(DaemonProcess(config, tmp_path), daemons)
    for n in range(5):
        put(server, "work", "producer.put-when-released",
            {"n": n, "release": str(release), "next": "next"})  # fmt: skip
    wait_until_sync(lambda: len(daemon.runs("start")) == 5, what="5 handlers waiting")
    server.signal(signal.SIGUSR1)  # drain mode: puts answer DRAINING
    release.touch()
    wait_until_sync(lambda: len(daemon.runs("end")) == 5, what="5 handlers done")
    assert total_jobs(server, "next") == 0
    spooled = json.loads(run_cli("spool", "status", str(tmp_path / "spool.db"), "--json").stdout)
    assert spooled["jobs"] == 5
    server.restart(hard=False)  # SIGTERM, then the same port and binlog: no longer draining
    wait_until_sync(lambda: len(daemon.runs("followup")) == 5, timeout=30, what="follow-ups")
    assert sorted(daemon.runs("followup")) == list(range(5))
    assert all(count == 1 for count in daemon.runs("followup").values())
    stop(daemon)
