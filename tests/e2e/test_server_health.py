"""beanstalkd's own health, watched by a daemon as operators run it: `tubeworker run` with
its control plane and two servers, one with a binlog. /metrics has each server's figures
(up, connections, jobs, binlog, info); a server killed -9 is `up 0` at the next poll, its
series still there, and `up 1` again once it is back; `tubeworker stats` prints the same."""

from __future__ import annotations

import json
from pathlib import Path

import greenstalk
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_daemon_process import run_cli
from tests.support.beanstalkd import BeanstalkdProcess, free_port
from tests.support.process import DaemonProcess
from tests.support.waiting import wait_until_sync

pytestmark = pytest.mark.slow


def _samples(base: str, name: str) -> dict[str, tuple[dict[str, str], float]]:
    """``name``'s samples by server (``SERVER/KIND``, ``SERVER/STATE``, ``SERVER/FILE``
    where the family has one), with their labels."""
    text = httpx.get(f"{base}/metrics", timeout=5).text
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                which = [sample.labels.get(k) for k in ("kind", "state", "file")]
                key = "/".join([sample.labels["server"], *(w for w in which if w)])
                found[key] = (sample.labels, sample.value)
    return found


def test_given_two_servers_then_each_ones_health_is_exported_and_a_dead_one_is_up_0(
    beanstalkd_binlog: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    durable = beanstalkd_binlog
    with BeanstalkdProcess() as memory:
        config = tmp_path / "worker.toml"
        config.write_text(
            f'[worker]\nservers = ["{durable.address}", "{memory.address}"]\n'
            '[[pool]]\ntubes = ["emails"]\n'
            "[control]\nmetrics_interval = 0.2\nserver_max_connections = 1000\n"
        )
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        daemon = DaemonProcess(config, tmp_path)
        daemons.append(daemon.start("--control", f"127.0.0.1:{port}"))
        daemon.wait_ready()
        with greenstalk.Client((durable.host, durable.port), use="emails") as client:
            client.put(b"{}", delay=3600)

        def both_up() -> bool:
            up = _samples(base, "tubeworker_server_up")
            return {k: v for k, (_, v) in up.items()} == {durable.address: 1, memory.address: 1}

        wait_until_sync(both_up, what="both servers up in /metrics")
        labels, _ = _samples(base, "tubeworker_server_info")[durable.address]
        assert labels["version"]
        assert labels["id"]
        binlog = _samples(base, "tubeworker_server_binlog_index")
        assert binlog[f"{durable.address}/current"][1] >= 1
        assert binlog[f"{memory.address}/current"][1] == 0  # no binlog
        wait_until_sync(
            lambda: _samples(base, "tubeworker_server_jobs")[f"{durable.address}/delayed"][1] == 1,
            what="the delayed job counted",
        )
        connections = _samples(base, "tubeworker_server_connections")
        assert connections[f"{durable.address}/workers"][1] >= 1  # the daemon's lanes
        limit = _samples(base, "tubeworker_server_max_connections")
        assert limit[durable.address][1] == 1000

        # The in-memory server killed -9: up 0 at the next poll, the series still there.
        memory.kill9()
        wait_until_sync(
            lambda: _samples(base, "tubeworker_server_up")[memory.address][1] == 0,
            timeout=10,
            what="up 0 for the dead server",
        )
        assert _samples(base, "tubeworker_server_up")[durable.address][1] == 1
        memory.restart()
        wait_until_sync(
            lambda: _samples(base, "tubeworker_server_up")[memory.address][1] == 1,
            timeout=15,
            what="up 1 again",
        )

    stats = run_cli("stats", "--server", durable.address)
    assert stats.returncode == 0, stats.stderr
    assert "binlog: files " in stats.stdout
    assert "records written" in stats.stdout
    document = json.loads(run_cli("stats", "--json", "--server", durable.address).stdout)
    (server,) = document["servers"]
    assert server["server"]["binlog_current_index"] >= 1
    assert server["server"]["job_timeouts"] == 0
