"""Heartbeats as users run them: `tubeworker run` with a `[[heartbeat]]` as
docs/schedules.md writes it, a real beanstalkd, default logging. While the tube flows the
heartbeat's age stays under 2 x `every` and each run pings `ping_url`; with the tube paused
on the server it reports held (the alert stays quiet); with the tube's only pool quiet its
age passes 3 x `every` and TubeworkerHeartbeatStale's expression, given the scraped values,
fires under promtool."""

from __future__ import annotations

import json
import signal
import textwrap
from pathlib import Path

import greenstalk
import httpx
import pytest
import trio
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_daemon_process import run_cli
from tests.e2e.test_deploy_prometheus import load_rules, promtool
from tests.support.beanstalkd import BeanstalkdProcess, free_port
from tests.support.httpserver import open_http_api
from tests.support.process import DaemonProcess
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

TOKEN = "heartbeat-token"
EVERY = 1.0


def _config(tmp_path: Path, server: BeanstalkdProcess, ping_url: str) -> Path:
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    config = tmp_path / "worker.toml"
    config.write_text(
        textwrap.dedent(
            f"""\
            [worker]
            servers = ["{server.address}"]

            [[pool]]
            name = "emails"
            tubes = ["emails"]

            [[heartbeat]]
            tube = "emails"
            every = "1s"
            ping_url = "{ping_url}"

            [control]
            token_file = "{token}"
            """
        )
    )
    return config


async def _heartbeat(base: str) -> dict[str, float]:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{base}/metrics", timeout=5)).text
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("tubeworker_heartbeat_") and sample.labels == {
                "tube": "emails"
            }:
                found[sample.name.removeprefix("tubeworker_heartbeat_")] = sample.value
    return found


async def _status(base: str) -> dict:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"{base}/status", timeout=5)).json()


def _alert_fires_on(values: dict[str, float], tmp_path: Path) -> bool:
    """Whether TubeworkerHeartbeatStale's expression gives a sample for these values,
    held steady, evaluated by promtool."""
    (rule,) = [r for r in load_rules() if r.get("alert") == "TubeworkerHeartbeatStale"]
    labels = 'job="tubeworker", instance="w1:9090", tube="emails"'
    series = [
        {"series": f"tubeworker_heartbeat_{name}{{{labels}}}", "values": f"{value}x5"}
        for name, value in values.items()
    ]
    verdicts = {}
    for fires in (True, False):
        test = {
            "interval": "1m",
            "input_series": series,
            "promql_expr_test": [
                {
                    "expr": rule["expr"],
                    "eval_time": "2m",
                    "exp_samples": [{"labels": '{tube="emails"}', "value": values["age_seconds"]}]
                    if fires
                    else [],
                }
            ],
        }
        path = tmp_path / f"heartbeat_test_{fires}.yml"
        path.write_text(yaml.safe_dump({"rule_files": [], "tests": [test]}))
        verdicts[fires] = promtool("test", "rules", path.name, cwd=tmp_path).returncode == 0
    assert verdicts[True] != verdicts[False], verdicts  # exactly one reading holds
    return verdicts[True]


async def test_given_a_heartbeat_then_its_age_tells_flowing_held_and_stalled_apart(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    async with open_http_api() as ping:
        config = _config(tmp_path, beanstalkd, f"{ping.url}/ping/emails")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        daemon = DaemonProcess(config, tmp_path)
        daemons.append(daemon.start("--control", f"127.0.0.1:{port}"))
        await wait_until(lambda: any(e.get("event") == "ready" for e in daemon.events()))

        # Flowing: each run pings, and the age read back stays under 2 x every.
        await wait_until(lambda: len(ping.requests) >= 2, timeout=15, what="two pings")
        ages = []
        for _ in range(8):
            seen = len(ping.requests)
            await wait_until(lambda seen=seen: len(ping.requests) > seen, what="the next ping")
            ages.append((await _heartbeat(base))["age_seconds"])
        assert max(ages) < 2 * EVERY, ages
        assert set(ping.requests) == {"/ping/emails"}
        listing = json.loads(run_cli("schedules", "-c", str(config), "--json").stdout)
        (beat,) = listing["heartbeats"]
        assert beat["tube"] == "emails"
        assert beat["age"] < 2 * EVERY
        assert beat["by"].endswith(f":{daemon.pid}")
        (status,) = (await _status(base))["heartbeats"]
        assert (status["tube"], status["held"], status["stale"]) == ("emails", False, False)
        assert status["age"] < 2 * EVERY

        # Held: paused on the server, the heartbeat waits, and says why.
        paused = run_cli("pause", "emails", "1m", "--server", beanstalkd.address)
        assert paused.returncode == 0, paused.stderr

        async def held_and_old() -> bool:
            now = await _heartbeat(base)
            return now["held"] == 1 and now["age_seconds"] > 3 * EVERY

        await wait_until(held_and_old, timeout=15, what="a held, old heartbeat")
        assert not _alert_fires_on(await _heartbeat(base), tmp_path)
        assert run_cli("pause", "emails", "0", "--server", beanstalkd.address).returncode == 0

        async def fresh() -> bool:
            now = await _heartbeat(base)
            return now["held"] == 0 and now["age_seconds"] < 2 * EVERY

        await wait_until(fresh, timeout=15, what="the heartbeat running again")

        # Stalled: the tube's only pool quiet, nobody runs it: stale, and the alert fires.
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient() as client:
            quiet = await client.post(f"{base}/quiet", headers=auth, timeout=5)
        assert quiet.json()["quiet"] is True
        pings = len(ping.requests)

        async def stale() -> bool:
            now = await _heartbeat(base)
            return now["held"] == 0 and now["age_seconds"] > 3 * EVERY

        await wait_until(stale, timeout=15, what="a stale heartbeat")
        assert _alert_fires_on(await _heartbeat(base), tmp_path)
        (status,) = (await _status(base))["heartbeats"]
        assert (status["held"], status["stale"]) == (False, True)
        assert len(ping.requests) <= pings + 1  # (one may have been running)
        # One heartbeat waits in the tube, not one a second (overlap = skip).
        with greenstalk.Client((beanstalkd.host, beanstalkd.port)) as client:
            assert int(client.stats_tube("emails")["current-jobs-ready"]) == 1
        daemon.signal(signal.SIGTERM)
        await trio.to_thread.run_sync(daemon.wait, 30)
