"""Chains through `tubeworker run` under kills: 1,000 chains of 5 steps, two daemons, one of
them killed -9 and restarted again and again. Each step is put by the worker before it
deletes the step before it, so every step runs at least once and after the one before it;
a step that runs twice (its predecessor's worker killed between the put and the delete)
carries the same id both times. Each run writes a line to one file both daemons append
to: the fleet's own order of events."""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.support.beanstalkd import BeanstalkdProcess
from tests.support.docs import block
from tests.support.process import DaemonProcess
from tests.support.waiting import wait_until
from tubeworker.producer import Producer, Step

pytestmark = pytest.mark.slow

CHAINS, STEPS = 1000, 5

# docs/workflows.md's handler, as written; the test's record of each run around it.
HANDLER = block("docs/workflows.md", "# myapp/imports.py").code
RECORD = """

import os as _os


async def import_chunk(payload: dict, step_id: str) -> None:
    fd = _os.open(_os.environ["STEPS"], _os.O_WRONLY | _os.O_APPEND | _os.O_CREAT)
    try:
        _os.write(fd, f"{payload['file']} {payload.get('chunk', 'summary')} {step_id}\\n".encode())
    finally:
        _os.close(fd)
    import trio as _trio

    await _trio.sleep(0.05)  # long enough for the kills to find steps running


write_summary = import_chunk
"""

CONFIG = """\
[worker]
servers = ["{address}"]

[handlers]
"import-chunk" = "myapp.imports:chunk"
"import-summary" = "myapp.imports:summary"

[[pool]]
name = "imports"
tubes = ["imports"]
concurrency = 20
"""


def runs(path: Path) -> list[tuple[str, str]]:
    """(file, chunk) of each run, in the order they ran."""
    return [(file, chunk) for file, chunk, _ in records(path)]


def records(path: Path) -> list[tuple[str, str, str]]:
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:  # (a line being written by a killed daemon may be short)
            found.append((parts[0], parts[1], parts[2]))
    return found


async def test_given_kills_then_every_step_runs_at_least_once_and_in_order(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (tmp_path / "myapp" / "imports.py").write_text(HANDLER + RECORD)
    config = tmp_path / "worker.toml"
    config.write_text(CONFIG.format(address=beanstalkd.address))
    record = tmp_path / "steps"
    env = {"STEPS": str(record)}

    def start() -> DaemonProcess:
        daemon = DaemonProcess(config, tmp_path, env=env)
        daemons.append(daemon.start())
        daemon.wait_ready()
        return daemon

    steady, victim = start(), start()
    # The docs' app, as written (its server replaced by the test's): one chain more.
    app = block("docs/workflows.md", "# the app: an import split into chunks, then a summary")
    names: dict[str, Any] = {}
    exec(app.code.replace("127.0.0.1:11300", beanstalkd.address), names)
    names["producer"].close()
    with Producer([beanstalkd.address]) as producer:
        for n in range(CHAINS):
            file = f"f{n}"
            steps = [Step("imports", "import-chunk", {"file": file, "chunk": c}) for c in range(4)]
            steps.append(Step("imports", "import-summary", {"file": file}))
            producer.chain(steps, chain_id=file)
    expected = (CHAINS + 1) * STEPS
    kills = 0
    # Kills while chains are under way (every step takes 0.05 s): up to five, and at least
    # two (the chains take several seconds; each kill and restart about one).
    while kills < 5 and len(set(runs(record))) < expected:
        await trio.sleep(0.7)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(10)
        kills += 1
        victim = start()
    assert kills >= 2, "the chains ended before the kills"
    await wait_until(
        lambda: len(set(runs(record))) == expected, timeout=90, what="every step of every chain"
    )
    seen = runs(record)
    order = ["0", "1", "2", "3", "summary"]
    for file in [*(f"f{n}" for n in range(CHAINS)), "orders.csv"]:
        firsts = [seen.index((file, step)) for step in order]
        assert firsts == sorted(firsts), (file, firsts)  # each step after the one before
    repeats = {run: count for run, count in Counter(seen).items() if count > 1}
    # Repeats happen only where a worker died: each of the victim's running steps (at
    # most its concurrency, 20) runs again, and so does the next step of each it had put
    # but not yet deleted: at most 2 x 20 a kill. A repeated step carries its id both
    # times (chain:<file>:<n>).
    assert len(repeats) <= kills * 2 * 20, repeats
    ids = {(file, chunk): set() for file, chunk in seen}
    for file, chunk, step_id in records(record):
        ids[file, chunk].add(step_id)
    for (file, chunk), found in ids.items():
        position = order.index(chunk)
        assert found == {f"chain:{file}:{position}"}, (file, chunk, found)
    for daemon in (steady, victim):
        events = daemon.events()
        assert [e for e in events if e.get("event") == "job buried"] == []
