"""Batches through `tubeworker run`, as docs/workflows.md tells a newcomer to use them: the
docs' import (chunks, one split in two by its handler, a summary on_complete); a burial
kicked and then succeeding re-opens on_success; a beanstalkd killed -9 and restarted
with its binlog mid-batch. Each handler run appends a line to one file (O_APPEND) every
daemon shares: the fleet's own order of events."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.beanstalkd import BeanstalkdProcess, free_port
from tests.support.docs import block
from tests.support.process import DaemonProcess
from tests.support.waiting import wait_until
from tubeworker.producer import Producer, Step

pytestmark = pytest.mark.slow

HANDLER = block("docs/workflows.md", "# myapp/batch_import.py").code
LEDGER = """

import os as _os


def _line(text: str) -> None:
    fd = _os.open(_os.environ["LEDGER"], _os.O_WRONLY | _os.O_APPEND | _os.O_CREAT)
    try:
        _os.write(fd, (text + "\\n").encode())
    finally:
        _os.close(fd)


async def import_rows(payload: dict) -> None:
    _line(f"chunk {payload['file']} {payload['chunk']}")


async def write_summary(payload: dict) -> None:
    _line(f"summary {payload['file']}")
"""

CONFIG = """\
[worker]
servers = ["{address}"]

[handlers]
"import-chunk" = "myapp.batch_import:import_chunk"
"import-summary" = "myapp.batch_import:import_summary"

[[pool]]
name = "imports"
tubes = ["imports"]
concurrency = 20
"""


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def tubeworker(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tubeworker", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def app_package(tmp_path: Path, code: str) -> None:
    (tmp_path / "myapp").mkdir(exist_ok=True)
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (tmp_path / "myapp" / "batch_import.py").write_text(code)


async def test_given_the_docs_import_then_the_summary_runs_once_after_every_chunk(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    app_package(tmp_path, HANDLER + LEDGER)
    config = tmp_path / "worker.toml"
    config.write_text(CONFIG.format(address=beanstalkd.address))
    ledger = tmp_path / "ledger"
    daemon = DaemonProcess(config, tmp_path, env={"LEDGER": str(ledger)})
    daemons.append(daemon.start())
    daemon.wait_ready()
    app = block(
        "docs/workflows.md", "# the app: an import in chunks, and a summary once they all ended"
    )
    names: dict[str, object] = {}
    exec(app.code.replace("127.0.0.1:11300", beanstalkd.address), names)
    batch_id = names["batch"].id  # type: ignore[attr-defined]
    names["producer"].close()  # type: ignore[attr-defined]
    await wait_until(lambda: "summary orders.csv" in lines(ledger), timeout=30, what="summary")
    seen = lines(ledger)
    chunks = {line for line in seen if line.startswith("chunk")}
    # Ten chunks, chunk 3 split by its handler into two halves in the same batch.
    expected = {f"chunk orders.csv {n}" for n in (0, 1, 2, 4, 5, 6, 7, 8, 9, "3a", "3b")}
    assert chunks == expected
    assert seen.index("summary orders.csv") > max(seen.index(c) for c in chunks)
    shown = tubeworker("batch", batch_id, "--server", beanstalkd.address, "--json")
    assert shown.returncode == 0, shown.stderr
    row = json.loads(shown.stdout)
    assert (row["state"], row["pending"], row["buried"]) == ("succeeded", 0, 0)
    assert row["callbacks"]["complete"]["fired"] is True
    assert row["description"] == "orders.csv"
    unknown = tubeworker("batch", "0000000000000000", "--server", beanstalkd.address)
    assert (unknown.returncode, unknown.stdout) == (66, "")
    assert unknown.stderr.startswith("tubeworker: no batch '0000000000000000' on ")
    listed = tubeworker("batches", "--server", beanstalkd.address)
    assert batch_id in listed.stdout
    assert "succeeded" in listed.stdout

    # The summary ran once, as one callback job (its envelope id names the batch).
    def fired_lines() -> list[dict[str, object]]:
        return [e for e in daemon.events() if e.get("event") == "batch callback fired"]

    await wait_until(fired_lines, timeout=10, what="the daemon's line")
    fired = fired_lines()
    assert [(e["batch"], e["callback"]) for e in fired] == [(batch_id, "complete")]
    assert seen.count("summary orders.csv") == 1


async def test_given_the_readme_batch_then_its_summary_runs_once_after_its_ten_chunks(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    app_package(tmp_path, HANDLER + LEDGER)
    config = tmp_path / "worker.toml"
    config.write_text(CONFIG.format(address=beanstalkd.address))
    ledger = tmp_path / "ledger"
    daemon = DaemonProcess(config, tmp_path, env={"LEDGER": str(ledger)})
    daemons.append(daemon.start())
    daemon.wait_ready()
    readme = block("README.md", "# an import in chunks, and one summary once every chunk is done")
    exec(readme.code.replace("127.0.0.1:11300", beanstalkd.address), {})
    await wait_until(lambda: "summary orders.csv" in lines(ledger), timeout=30, what="summary")
    seen = lines(ledger)
    chunks = [line for line in seen if line.startswith("chunk")]
    assert sorted(chunks) == sorted(f"chunk orders.csv {n}" for n in range(10))
    assert seen[-1] == "summary orders.csv"
    assert seen.count("summary orders.csv") == 1


FLAKY = """\
import os

from tubeworker import Bury, Job, handler


def _line(text: str) -> None:
    fd = os.open(os.environ["LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, (text + "\\n").encode())
    finally:
        os.close(fd)


@handler()
async def import_chunk(job: Job) -> None:
    if job.payload.get("broken") and os.path.exists(os.environ["BROKEN"]):
        _line(f"buried {job.payload['chunk']}")
        raise Bury("the file is broken")
    _line(f"chunk {job.payload['chunk']}")


@handler()
async def import_summary(job: Job) -> None:
    _line(f"callback {job.payload['on']} {job.id}")
"""


async def test_given_a_burial_kicked_when_it_then_succeeds_then_on_success_fires(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    app_package(tmp_path, FLAKY)
    config = tmp_path / "worker.toml"
    config.write_text(CONFIG.format(address=beanstalkd.address))
    ledger, broken = tmp_path / "ledger", tmp_path / "broken"
    broken.write_text("")
    env = {"LEDGER": str(ledger), "BROKEN": str(broken)}
    daemon = DaemonProcess(config, tmp_path, env=env)
    daemons.append(daemon.start())
    daemon.wait_ready()

    def on(kind: str) -> Step:
        return Step("imports", "import-summary", {"on": kind})

    callbacks_given = {"on_success": on("success"), "on_complete": on("complete")}
    with (
        Producer([beanstalkd.address]) as producer,
        producer.batch(**callbacks_given, on_death=on("death")) as batch,
    ):
        for n in range(5):
            batch.enqueue("imports", "import-chunk", {"chunk": n, "broken": n == 2})

    def callbacks() -> list[str]:
        return [line.split()[1] for line in lines(ledger) if line.startswith("callback")]

    await wait_until(lambda: sorted(callbacks()) == ["complete", "death"], timeout=30, what="")
    broken.unlink()  # fixed: kick the burial, it succeeds, and the batch has all succeeded
    kicked = tubeworker("kick", "imports", "--server", beanstalkd.address)
    assert kicked.returncode == 0, kicked.stderr
    await wait_until(lambda: "success" in callbacks(), timeout=30, what="on_success")
    assert sorted(callbacks()) == ["complete", "death", "success"]  # each once
    seen = lines(ledger)
    assert seen.index("chunk 2") < [line.split()[1] for line in seen].index("success")


async def test_given_beanstalkd_killed_and_restarted_mid_batch_then_callbacks_fire_once(
    beanstalkd_binlog: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    code = FLAKY.replace(
        "    _line(f\"chunk {job.payload['chunk']}\")",
        "    import trio\n\n    await trio.sleep(0.05)\n"
        "    _line(f\"chunk {job.payload['chunk']}\")",
    )
    app_package(tmp_path, code)
    config = tmp_path / "worker.toml"
    config.write_text(CONFIG.format(address=beanstalkd_binlog.address))
    ledger = tmp_path / "ledger"
    env = {"LEDGER": str(ledger), "BROKEN": str(tmp_path / "never")}
    daemon = DaemonProcess(config, tmp_path, env=env)
    daemons.append(daemon.start())
    daemon.wait_ready()
    batches = 20
    with Producer([beanstalkd_binlog.address]) as producer:
        for b in range(batches):
            complete = Step("imports", "import-summary", {"on": f"complete-{b}"})
            with producer.batch(on_complete=complete) as batch:
                for n in range(10):
                    batch.enqueue("imports", "import-chunk", {"chunk": f"{b}.{n}"})

    def chunks() -> set[str]:
        return {line for line in lines(ledger) if line.startswith("chunk")}

    await wait_until(lambda: len(chunks()) >= 40, timeout=30, what="some chunks done")
    beanstalkd_binlog.kill9()
    beanstalkd_binlog.restart()
    await wait_until(lambda: len(chunks()) == batches * 10, timeout=60, what="every chunk")

    def fired() -> list[str]:
        return [line.split()[1] for line in lines(ledger) if line.startswith("callback")]

    await wait_until(lambda: len(set(fired())) == batches, timeout=30, what="every callback")
    runs = {kind: fired().count(kind) for kind in set(fired())}
    # A callback job runs at least once; the batch puts it once (one job id per batch).
    ids = {}
    for line in lines(ledger):
        if line.startswith("callback"):
            _, kind, job_id = line.split()
            ids.setdefault(kind, set()).add(job_id)
    assert all(len(found) == 1 for found in ids.values()), ids
    assert set(runs) == {f"complete-{b}" for b in range(batches)}


def metric(base: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """``name``'s samples on the daemon's /metrics, by their labels."""
    text = httpx.get(f"{base}/metrics", timeout=5).text
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


async def test_given_batches_then_the_metrics_count_callbacks_fired_and_batches_kept(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    app_package(tmp_path, FLAKY)
    config = tmp_path / "worker.toml"
    config.write_text(CONFIG.format(address=beanstalkd.address))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"LEDGER": str(tmp_path / "ledger"), "BROKEN": str(tmp_path / "broken")}
    daemon = DaemonProcess(config, tmp_path, env=env)
    daemons.append(daemon.start("--control", f"127.0.0.1:{port}"))
    daemon.wait_ready()
    (tmp_path / "broken").write_text("")
    with Producer([beanstalkd.address]) as producer:
        for broken in (False, True):
            complete = Step("imports", "import-summary", {"on": "complete"})
            success = Step("imports", "import-summary", {"on": "success"})
            with producer.batch(on_complete=complete, on_success=success) as batch:
                for n in range(3):
                    batch.enqueue("imports", "import-chunk", {"chunk": n, "broken": broken})

    def fired() -> dict[tuple[tuple[str, str], ...], float]:
        return metric(base, "tubeworker_batch_callbacks_total")

    expected = {
        (("callback", "complete"),): 2.0,
        (("callback", "success"),): 1.0,
        (("callback", "death"),): 0.0,
    }
    await wait_until(lambda: fired() == expected, timeout=30, what="two batches' callbacks")
    kept = (("server", beanstalkd.address),)
    await wait_until(
        lambda: metric(base, "tubeworker_server_batches").get(kept) == 2.0,
        timeout=30,
        what="the server's two batches counted",
    )
    completion = metric(base, "tubeworker_batch_completion_seconds_count")
    assert completion == {(): 2.0}
