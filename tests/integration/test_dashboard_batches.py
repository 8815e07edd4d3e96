"""The dashboard's batch reads (``GET /api/batches``, ``GET /api/batch``) against a real
beanstalkd: batches opened with the Trio producer and left in each state — open (never
closed), running (closed, no job done), complete with a burial, succeeded — their jobs
ended as the daemon ends them (the end recorded in the batch with ``batches.ops``, then
the job deleted or buried), read through the dashboard served on its own."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
import pytest
import trio

from tests.support.beanstalkd import BeanstalkdProcess, free_port
from tubeworker.batches.drive import drive
from tubeworker.batches.ops import record_burial, record_success
from tubeworker.beanstalk.client import Address, open_client, parse_address
from tubeworker.control import dashboard_batches
from tubeworker.control.access import Access
from tubeworker.control.standalone import run_dashboard
from tubeworker.envelope import read_batch_ref
from tubeworker.producer import AsyncProducer, Step

OPERATOR, VIEWER = "batches-operator", "batches-viewer"
CALLBACKS = "batch-callbacks"


@asynccontextmanager
async def serving(
    servers: Sequence[str], access: Access | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """The dashboard on its own (as ``tubeworker dashboard`` runs it) on a free port."""
    async with trio.open_nursery() as nursery:
        url = await nursery.start(
            partial(
                run_dashboard,
                [parse_address(s) for s in servers],
                Address("127.0.0.1", free_port()),
                token=OPERATOR,
                access=access,
                interval=60.0,
            )
        )
        try:
            async with httpx.AsyncClient(base_url=url, timeout=20, trust_env=False) as http:
                yield http
        finally:
            nursery.cancel_scope.cancel()


class LeaveOpen(Exception):
    """Raised in a batch's block: the handle leaves the batch open (never closed)."""


async def open_batch(
    producer: AsyncProducer, tube: str, jobs: int, description: str, *, close: bool = True
) -> str:
    """A batch of ``jobs`` jobs in ``tube`` with the three callbacks; its id."""
    steps = {
        kind: Step(CALLBACKS, f"on-{kind}", {"kind": kind})
        for kind in ("success", "complete", "death")
    }
    batch = await producer.batch(
        on_success=steps["success"],
        on_complete=steps["complete"],
        on_death=steps["death"],
        description=description,
    )
    try:
        async with batch:
            for n in range(jobs):
                await batch.enqueue(tube, "work", {"n": n})
            if not close:
                raise LeaveOpen
    except LeaveOpen:
        pass
    return batch.id


async def end_jobs(address: str, tube: str, outcomes: Sequence[str]) -> None:
    """Reserve the jobs of ``tube`` and end each as the daemon does: its end recorded in
    its batch first (``record_success`` / ``record_burial``), then deleted or buried."""
    async with open_client(address) as worker, open_client(address) as book:
        await worker.watch(tube)
        await worker.ignore("default")
        for outcome in outcomes:
            job = await worker.reserve(timeout=5)
            ref = read_batch_ref(json.loads(job.body)["batch"])
            assert ref is not None
            if outcome == "success":
                await drive(book, record_success(ref))
                await worker.delete(job.id)
            else:
                await drive(book, record_burial(ref))
                await worker.bury(job.id)


def fired(row: dict[str, Any]) -> dict[str, bool]:
    return {kind: callback["fired"] for kind, callback in row["callbacks"].items()}


async def test_given_batches_in_each_state_then_the_reads_show_their_counts_and_callbacks(
    beanstalkd: BeanstalkdProcess,
) -> None:
    address = beanstalkd.address
    with trio.fail_after(60):
        async with AsyncProducer([address]) as producer:
            still_open = await open_batch(producer, "b-open", 2, "left open", close=False)
            running = await open_batch(producer, "b-running", 2, "nothing done yet")
            complete = await open_batch(producer, "b-complete", 2, "one buried")
            succeeded = await open_batch(producer, "b-succeeded", 3, "all done")
        await end_jobs(address, "b-complete", ["burial", "success"])
        await end_jobs(address, "b-succeeded", ["success"] * 3)

        async with serving([address]) as http:
            answer = await http.get("/api/batches")
            assert answer.status_code == 200
            listing = answer.json()
            one = await http.get("/api/batch", params={"server": address, "id": complete})
            alone = await http.get("/api/batch", params={"id": succeeded})  # the only server
            missing = await http.get(
                "/api/batch", params={"server": address, "id": "0123456789abcdef"}
            )
            bad_id = await http.get("/api/batch", params={"server": address, "id": "Not An Id"})
            no_id = await http.get("/api/batch", params={"server": address})
            bad_server = await http.get(
                "/api/batch", params={"server": "10.9.9.9:1", "id": complete}
            )

    assert listing["errors"] == {}
    assert listing["servers"] == [{"server": address, "batches": 4, "capped": False, "error": None}]
    rows = {row["id"]: row for row in listing["batches"]}
    assert set(rows) == {still_open, running, complete, succeeded}
    # Newest first: the last opened leads.
    assert listing["batches"][0]["id"] == succeeded
    counts = {
        batch_id: (row["state"], row["pending"], row["succeeded"], row["buried"])
        for batch_id, row in rows.items()
    }
    assert counts == {
        still_open: ("open", 2, 0, 0),
        running: ("running", 2, 0, 0),
        complete: ("complete", 0, 1, 1),
        succeeded: ("succeeded", 0, 3, 0),
    }
    assert fired(rows[still_open]) == {"success": False, "complete": False, "death": False}
    assert fired(rows[running]) == {"success": False, "complete": False, "death": False}
    assert fired(rows[complete]) == {"success": False, "complete": True, "death": True}
    assert fired(rows[succeeded]) == {"success": True, "complete": True, "death": False}
    for row in rows.values():
        assert row["server"] == address
        assert row["abandoned"] == 0
        assert row["age"] is not None
        assert 0 <= row["age"] < 60
        assert {c["tube"] for c in row["callbacks"].values()} == {CALLBACKS}
        assert {c["task"] for c in row["callbacks"].values()} == {
            "on-success",
            "on-complete",
            "on-death",
        }
    assert rows[complete]["description"] == "one buried"

    assert one.status_code == 200
    assert {k: v for k, v in one.json().items() if k not in ("age", "now")} == {
        k: v for k, v in rows[complete].items() if k != "age"
    }
    assert alone.status_code == 200
    assert alone.json()["state"] == "succeeded"
    assert missing.status_code == 404
    assert "no batch 0123456789abcdef on" in missing.json()["error"]
    assert bad_id.status_code == 400
    assert "not a batch id" in bad_id.json()["error"]
    assert no_id.status_code == 400
    assert bad_server.status_code == 400
    assert "unknown server" in bad_server.json()["error"]


async def test_given_a_server_down_then_it_is_reported_apart_and_the_others_answered(
    beanstalkd: BeanstalkdProcess,
) -> None:
    address = beanstalkd.address
    down = f"127.0.0.1:{free_port()}"  # nothing listens there
    with trio.fail_after(60):
        async with AsyncProducer([address]) as producer:
            batch_id = await open_batch(producer, "b-up", 1, "on the live server")
        async with serving([address, down]) as http:
            listing = (await http.get("/api/batches")).json()
            one = await http.get("/api/batch", params={"server": down, "id": batch_id})

    assert [row["id"] for row in listing["batches"]] == [batch_id]
    assert set(listing["errors"]) == {down}
    assert "cannot connect to beanstalkd at" in listing["errors"][down]
    servers = {s["server"]: s for s in listing["servers"]}
    assert servers[address]["error"] is None
    assert servers[address]["batches"] == 1
    assert servers[down]["batches"] == 0
    assert servers[down]["error"] == listing["errors"][down]
    assert one.status_code == 503
    assert "cannot connect" in one.json()["error"]


async def test_given_a_server_that_never_answers_then_it_is_reported_after_the_deadline(
    beanstalkd: BeanstalkdProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dashboard_batches, "SERVER_DEADLINE", 0.5)
    held: list[trio.SocketStream] = []

    async def hold(stream: trio.SocketStream) -> None:
        held.append(stream)  # accepted, never answered
        await trio.sleep_forever()

    with trio.fail_after(30):
        async with AsyncProducer([beanstalkd.address]) as producer:
            batch_id = await open_batch(producer, "b-live", 1, "on the live server")
        async with trio.open_nursery() as nursery:
            (listener,) = await nursery.start(partial(trio.serve_tcp, hold, 0, host="127.0.0.1"))
            silent = f"127.0.0.1:{listener.socket.getsockname()[1]}"
            async with serving([beanstalkd.address, silent]) as http:
                started = trio.current_time()
                listing = (await http.get("/api/batches")).json()
                took = trio.current_time() - started
            nursery.cancel_scope.cancel()

    assert listing["errors"] == {silent: "no answer within 0.5 s"}
    assert [row["id"] for row in listing["batches"]] == [batch_id]
    assert took < 5  # the silent server's deadline, not its connection's 10 s reply timeout
    assert held  # it was reached: the deadline, not a refused connection, reported it


@pytest.mark.parametrize(
    ("token", "status"), [(None, 401), ("wrong", 401), (VIEWER, 200), (OPERATOR, 200)]
)
async def test_given_viewer_tokens_then_batch_reads_need_one_as_the_other_reads_do(
    beanstalkd: BeanstalkdProcess, token: str | None, status: int
) -> None:
    access = Access(OPERATOR, VIEWER)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with trio.fail_after(30):
        async with serving([beanstalkd.address], access) as http:
            listing = await http.get("/api/batches", headers=headers)
            one = await http.get("/api/batch", params={"id": "abc"}, headers=headers)
    assert listing.status_code == status
    assert one.status_code == (status if status != 200 else 404)
