"""Who sees job bodies on the dashboard (its Access, served for real on a free port, over
a real beanstalkd): withheld from a viewer by default in every read that carries one (a
job, a peek, the job browser's previews), shown to a viewer with
``show_bodies_to = "viewer"``, and masked by ``redact`` for whoever sees them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Literal

import httpx
import trio

from tests.support.beanstalkd import BeanstalkdProcess, free_port
from tubeworker.admin_ops import install_redact, redacting
from tubeworker.beanstalk.client import Address, open_client, parse_address
from tubeworker.control.access import Access
from tubeworker.control.standalone import run_dashboard

OPERATOR, VIEWER = "roles-operator", "roles-viewer"
CARD = "4111 1111 1111 1111"
BODY = json.dumps({"task": "charge", "payload": {"card_number": CARD, "name": "Ada"}})


@asynccontextmanager
async def serving(
    server: BeanstalkdProcess, bodies_to: Literal["operator", "viewer"]
) -> AsyncIterator[httpx.AsyncClient]:
    access = Access(OPERATOR, VIEWER, bodies_to=bodies_to)
    kept = redacting()
    install_redact(["payload.card_number"])
    try:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(
                partial(
                    run_dashboard,
                    [parse_address(server.address)],
                    Address("127.0.0.1", free_port()),
                    token=OPERATOR,
                    access=access,
                    interval=60.0,
                )
            )
            try:
                headers = {"Authorization": f"Bearer {VIEWER}"}
                async with httpx.AsyncClient(
                    base_url=url, timeout=10, trust_env=False, headers=headers
                ) as http:
                    yield http
            finally:
                nursery.cancel_scope.cancel()
    finally:
        install_redact(".".join(("payload", *path)) for path in kept)


async def reads(http: httpx.AsyncClient, server: str, job_id: int) -> list[object]:
    """Every body a viewer's reads carry: a job's, a peek's, the browser's preview."""
    job = (await http.get("/api/job", params={"server": server, "id": job_id})).json()
    peek = await http.get("/api/peek", params={"server": server, "tube": "held", "state": "ready"})
    jobs = await http.get("/api/jobs", params={"server": server, "tube": "held"})
    (listed,) = jobs.json()["jobs"]
    assert listed["id"] == job_id
    return [job["body"], peek.json()["body"], listed["preview"]]


async def put_one(address: str) -> int:
    async with open_client(address) as client:
        await client.use("held")
        return await client.put(BODY.encode(), priority=2, ttr=60)


async def test_given_viewers_then_bodies_are_withheld_unless_shown_to_them(
    beanstalkd: BeanstalkdProcess,
) -> None:
    job_id = await put_one(beanstalkd.address)
    with trio.fail_after(30):
        async with serving(beanstalkd, "operator") as http:
            withheld = await reads(http, beanstalkd.address, job_id)
            download = await http.get(
                "/api/job/body", params={"server": beanstalkd.address, "id": job_id}
            )
        async with serving(beanstalkd, "viewer") as http:
            shown = await reads(http, beanstalkd.address, job_id)
            downloaded = await http.get(
                "/api/job/body", params={"server": beanstalkd.address, "id": job_id}
            )
    assert all(CARD not in json.dumps(body) for body in withheld + shown)
    assert all("Ada" not in json.dumps(body) for body in withheld)
    assert withheld[0] == {
        "kind": "withheld",
        "text": withheld[0]["text"],  # type: ignore[index]
        "note": "",
        "size": len(BODY),
    }
    assert withheld[2] == "(withheld)"
    assert download.status_code == 403
    assert all("Ada" in json.dumps(body) for body in shown)
    assert '"card_number": "***"' in shown[0]["text"]  # type: ignore[index]
    assert json.loads(downloaded.content)["payload"] == {"card_number": "***", "name": "Ada"}
