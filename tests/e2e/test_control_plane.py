"""The control plane as operators use it: `tubeworker run --control HOST:PORT` (a real
daemon, real beanstalkd), scraped and called over HTTP, events read over a WebSocket."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import greenstalk
import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import open_websocket_url

from tests.e2e.test_daemon_process import put_jobs, write_config
from tests.support.beanstalkd import BeanstalkdProcess, free_port
from tests.support.process import DaemonProcess
from tests.support.waiting import wait_until_sync

pytestmark = pytest.mark.slow

TOKEN = "s3cret-token"


def start_with_control(
    server: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess], **pool: object
) -> tuple[DaemonProcess, str]:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    config = write_config(tmp_path / "w.toml", server, **pool)
    config.write_text(
        config.read_text() + f'[control]\ntoken_file = "{token_file}"\nmetrics_interval = 0.2\n'
    )
    port = free_port()
    daemon = DaemonProcess(config, tmp_path)
    daemons.append(daemon.start("--control", f"127.0.0.1:{port}"))
    daemon.wait_ready()
    return daemon, f"http://127.0.0.1:{port}"


def metrics(base: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def value(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    return sum(
        v for ls, v in samples.get(name, []) if all(ls.get(k) == x for k, x in labels.items())
    )


def test_given_jobs_processed_then_metrics_health_and_status_tell_the_truth(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    daemon, base = start_with_control(beanstalkd, tmp_path, daemons, concurrency=4)
    assert httpx.get(f"{base}/healthz", timeout=5).json()["ok"] is True
    wait_until_sync(
        lambda: httpx.get(f"{base}/readyz", timeout=5).status_code == 200, what="readiness"
    )
    put_jobs(beanstalkd, "sleepy", [{"n": n, "seconds": 0} for n in range(20)])
    with greenstalk.Client((beanstalkd.host, beanstalkd.port), use="e2e") as client:
        client.put(json.dumps({"task": "sleepy", "payload": {"n": 99}}), delay=2)
        client.use("other")
        client.put("waiting in a tube nobody works on")

    wait_until_sync(lambda: len(daemon.runs("end")) == 21, timeout=20, what="21 jobs done")

    def scraped_all() -> bool:
        m = metrics(base)
        return value(m, "tubeworker_jobs_total", tube="e2e", outcome="deleted") == 21

    wait_until_sync(scraped_all, what="the jobs counted in /metrics")
    m = metrics(base)
    assert value(m, "tubeworker_jobs_total", tube="e2e", handler="sleepy", cause="completed") == 21
    assert value(m, "tubeworker_job_duration_seconds_count", handler="sleepy") == 21
    # The delayed job waited at least its 2 s delay between put and reserve.
    latency = [float(ls["le"]) for ls, v in m["tubeworker_queue_latency_seconds_bucket"] if v >= 1]
    assert latency
    assert value(m, "tubeworker_queue_latency_seconds_sum", tube="e2e") >= 2
    # Every run was a first attempt: all 21 in the first bucket.
    assert value(m, "tubeworker_job_attempt_bucket", tube="e2e", le="1.0") == 21
    assert value(m, "tubeworker_job_attempt_count", tube="e2e") == 21
    assert "process_resident_memory_bytes" in m
    # Tube depths come from stats-tube; the pool's tube is empty now.
    with greenstalk.Client((beanstalkd.host, beanstalkd.port)) as client:
        ready = int(client.stats_tube("e2e")["current-jobs-ready"])
    assert value(m, "tubeworker_tube_jobs", tube="e2e", state="ready") == ready
    assert value(m, "tubeworker_tube_backlog_seconds", tube="e2e") == 0

    status = httpx.get(f"{base}/status", timeout=5).json()
    assert status["counters"]["deleted"] == 21
    assert status["pools"]["pool0"]["slots"] == 4
    assert status["draining"] is False


def test_given_no_token_then_actions_are_refused_and_with_it_they_work(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    daemon, base = start_with_control(beanstalkd, tmp_path, daemons, concurrency=2)
    assert httpx.post(f"{base}/quiet", timeout=5).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert httpx.post(f"{base}/quiet", headers=wrong, timeout=5).status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.post(f"{base}/quiet", headers=auth, timeout=5).json()["quiet"] is True
    put_jobs(beanstalkd, "sleepy", [{"n": 1, "seconds": 0}])
    assert httpx.get(f"{base}/status", timeout=5).json()["quiet"] is True
    assert httpx.post(f"{base}/resume", headers=auth, timeout=5).json()["quiet"] is False
    wait_until_sync(lambda: len(daemon.runs("end")) == 1, what="the job after resume")
    assert httpx.get(f"{base}/nope", timeout=5).status_code == 404
    assert httpx.get(f"{base}/quiet", timeout=5).status_code == 405

    # A drain from the control plane: not ready while the running job finishes, exit 0.
    put_jobs(beanstalkd, "sleepy", [{"n": 2, "seconds": 3}])
    wait_until_sync(lambda: len(daemon.runs("start")) == 2, what="a running job")
    assert httpx.post(f"{base}/drain", headers=auth, timeout=5).json()["draining"] is True
    assert httpx.get(f"{base}/readyz", timeout=5).status_code == 503
    assert daemon.wait(timeout=20) == 0
    assert len(daemon.runs("end")) == 2


def test_given_an_events_client_then_it_sees_job_outcomes_live(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    daemon, base = start_with_control(beanstalkd, tmp_path, daemons, concurrency=2)
    url = base.replace("http://", "ws://") + "/events"
    seen: list[dict[str, object]] = []

    async def listen() -> None:
        with trio.fail_after(20):
            async with open_websocket_url(url) as ws:
                seen.append(json.loads(await ws.get_message()))  # hello
                await trio.to_thread.run_sync(
                    lambda: put_jobs(
                        beanstalkd, "sleepy", [{"n": n, "seconds": 0} for n in range(3)]
                    )
                )
                while sum(1 for e in seen if e.get("type") == "job") < 3:
                    seen.append(json.loads(await ws.get_message()))

    trio.run(listen)
    assert seen[0]["type"] == "hello"
    jobs = [e for e in seen if e.get("type") == "job"]
    assert {e["outcome"] for e in jobs} == {"deleted"}
    assert {e["tube"] for e in jobs} == {"e2e"}
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=15) == 0
