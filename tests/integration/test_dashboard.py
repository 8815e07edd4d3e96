"""The dashboard's JSON endpoints and live events against a real beanstalkd: the dashboard
served on its own (``control.standalone.run_dashboard``, as ``tubeworker dashboard`` runs
it) in-process, called over HTTP and WebSocket. The browser tests drive the page itself."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from importlib.resources import files
from typing import Any

import httpx
import trio
from structlog.testing import capture_logs
from trio_websocket import open_websocket_url

from tests.support.beanstalkd import BeanstalkdProcess, free_port
from tests.support.httpserver import Reply, open_http_api
from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import Address, open_client, parse_address
from tubeworker.burials import new_record, write_record
from tubeworker.control.dashboard_reads import DETAIL_LIMIT
from tubeworker.control.standalone import run_dashboard

TOKEN = "dashboard-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@asynccontextmanager
async def serving(
    server: BeanstalkdProcess,
    *,
    daemons: Sequence[str] = (),
    interval: float = 60.0,
    token: str | None = TOKEN,
) -> AsyncIterator[httpx.AsyncClient]:
    """The dashboard on a free port, and an HTTP client for it; stopped at the end."""
    async with trio.open_nursery() as nursery:
        url = await nursery.start(
            partial(
                run_dashboard,
                [parse_address(server.address)],
                Address("127.0.0.1", free_port()),
                token=token,
                daemons=daemons,
                interval=interval,
            )
        )
        try:
            async with httpx.AsyncClient(base_url=url, timeout=10, trust_env=False) as http:
                yield http
        finally:
            nursery.cancel_scope.cancel()


async def put_in_tubes(address: str, jobs: Sequence[tuple[str, bytes]]) -> list[int]:
    """Put (tube, body) pairs in pipelined writes; their ids."""
    ids: list[int] = []
    async with open_client(address) as client:
        for start in range(0, len(jobs), 250):
            commands: list[p.Command] = []
            for tube, body in jobs[start : start + 250]:
                commands += [p.Use(tube), p.Put(body, 1024, 0, 60)]
            replies = await client.pipeline(commands)
            ids += [r.id for r in replies if isinstance(r, p.Inserted)]
    return ids


async def bury_all(address: str, tube: str) -> list[int]:
    """Reserve and bury every ready job of ``tube``; their ids."""
    buried = []
    async with open_client(address) as client:
        await client.watch(tube)
        await client.ignore("default")
        while True:
            try:
                job = await client.reserve(timeout=0)
            except Exception:  # TimedOutError: none left
                break
            await client.bury(job.id)
            buried.append(job.id)
    return buried


async def test_given_a_thousand_tubes_then_pages_come_from_one_poll_whatever_the_viewers(
    beanstalkd: BeanstalkdProcess,
) -> None:
    jobs = [(f"many-{n:04}", b"x") for n in range(1000)]
    jobs += [("many-0007", b"more")] * 5
    await put_in_tubes(beanstalkd.address, jobs)
    async with open_client(beanstalkd.address) as client:
        before = (await client.stats()).cmd_stats_tube
    with trio.fail_after(30):
        async with serving(beanstalkd) as http:
            pages: list[dict[str, Any]] = []

            async def view(page: int) -> None:
                response = await http.get(
                    "/api/tubes", params={"q": "many-", "page": page, "per_page": 50}
                )
                pages.append(response.json())

            async with trio.open_nursery() as viewers:
                for page in range(1, 21):
                    viewers.start_soon(view, page)
            ranked = (
                await http.get("/api/tubes", params={"sort": "ready", "desc": 1, "per_page": 3})
            ).json()
    async with open_client(beanstalkd.address) as client:
        polled = (await client.stats()).cmd_stats_tube - before

    assert {page["total"] for page in pages} == {1000}
    assert sorted(page["page"] for page in pages) == list(range(1, 21))
    assert sum(len(page["rows"]) for page in pages) == 1000
    assert ranked["rows"][0]["tube"] == "many-0007"
    assert ranked["rows"][0]["ready"] == 6
    # 21 page views, one round of stats-tube (1000 tubes and "default"): not one per view.
    assert 1001 <= polled < 2 * 1001


async def test_given_actions_then_the_token_is_needed_and_each_is_done_and_logged(
    beanstalkd: BeanstalkdProcess,
) -> None:
    address = beanstalkd.address
    with trio.fail_after(30), capture_logs() as logs:
        async with serving(beanstalkd) as http:
            put = {"tube": "acts", "body": '{"task": "t", "payload": 1}', "delay": "0"}
            assert (await http.post("/api/put", json=put)).status_code == 401
            wrong = {"Authorization": "Bearer not-it"}
            assert (await http.post("/api/put", json=put, headers=wrong)).status_code == 401
            answer = (await http.post("/api/put", json=put, headers=AUTH)).json()
            job_id = answer["id"]

            pause = {"server": address, "tube": "acts", "seconds": "30s"}
            assert (await http.post("/api/pause", json=pause, headers=AUTH)).json()["paused"] == 30
            async with open_client(address) as client:
                assert (await client.stats_tube("acts")).pause == 30
            resume = {**pause, "seconds": 0}
            assert (await http.post("/api/pause", json=resume, headers=AUTH)).status_code == 200

            assert await bury_all(address, "acts") == [job_id]
            kick_job = {"id": job_id}
            assert (await http.post("/api/kick-job", json=kick_job, headers=AUTH)).json() == {
                "ok": True,
                "kicked": 1,
            }
            await bury_all(address, "acts")
            kick = {"tube": "acts", "count": 5}
            assert (await http.post("/api/kick", json=kick, headers=AUTH)).json()["kicked"] == 1
            delete = {"id": job_id}
            assert (await http.post("/api/delete", json=delete, headers=AUTH)).status_code == 200
            again = await http.post("/api/delete", json=delete, headers=AUTH)
            bad_tube = await http.post("/api/kick", json={"tube": "-bad"}, headers=AUTH)
            bad_server = await http.post(
                "/api/kick", json={"tube": "acts", "server": "10.1.1.1:11300"}, headers=AUTH
            )
            not_json = await http.post("/api/kick", content=b"[1, 2", headers=AUTH)
    assert again.status_code == 404
    assert "not found" in again.json()["error"]
    assert bad_tube.status_code == 400
    assert bad_server.status_code == 400
    assert "unknown server" in bad_server.json()["error"]
    assert not_json.status_code == 400
    done = [e for e in logs if e["event"] == "dashboard action"]
    assert [e["action"] for e in done] == ["put", "pause", "pause", "kick-job", "kick", "delete"]
    assert done[0]["id"] == job_id
    assert done[1]["seconds"] == "30s"
    refused = [e for e in logs if e["event"] == "dashboard action refused"]
    assert [e["action"] for e in refused] == ["put", "put"]


async def test_given_no_token_configured_then_the_dashboard_is_read_only(
    beanstalkd: BeanstalkdProcess,
) -> None:
    with trio.fail_after(20), capture_logs() as logs:
        async with serving(beanstalkd, token=None) as http:
            overview = (await http.get("/api/overview")).json()
            put = {"tube": "never", "body": "x"}
            refused = await http.post("/api/put", json=put, headers=AUTH)
            tubes = (await http.get("/api/tubes")).json()  # reads need no token
    assert overview["actions_enabled"] is False
    assert refused.status_code == 403  # not 401: no token could be accepted
    assert refused.json()["error"].startswith("read-only: no token is configured")
    assert tubes["total"] >= 1
    (line,) = [e for e in logs if e["event"] == "dashboard action refused"]
    assert (line["action"], line["why"]) == ("put", "no token configured")
    async with open_client(beanstalkd.address) as client:
        assert "never" not in await client.list_tubes()


async def test_given_buried_jobs_then_reasons_and_safely_rendered_bodies_are_listed(
    beanstalkd: BeanstalkdProcess,
) -> None:
    address = beanstalkd.address
    big = b"line of text\n" * 4000  # 52 KB
    binary = bytes(range(256))
    envelope = b'{"task":"send","payload":{"to":"<b>x</b>"}}'
    ids = await put_in_tubes(address, [("graves", envelope), ("graves", binary), ("graves", big)])
    await bury_all(address, "graves")
    async with open_client(address) as client:
        for job_id, cause, reason in (
            (ids[0], "handler_bury", "no such user"),
            (ids[1], "bad_body", "not UTF-8"),
        ):
            stats = await client.stats_job(job_id)
            await write_record(client, new_record(job_id, stats, cause, reason, 1))
    with trio.fail_after(30):
        async with serving(beanstalkd) as http:
            listed = (await http.get("/api/buried", params={"tube": "graves"})).json()
            detail = (await http.get("/api/job", params={"id": ids[2]})).json()
            download = await http.get(detail["download"])
            peek = {"tube": "graves", "state": "buried"}
            peeked = (await http.get("/api/peek", params=peek)).json()
            no_ready = await http.get("/api/peek", params={**peek, "state": "ready"})
            kick = {"tube": "graves", "reason": "UTF-8"}
            kicked = (await http.post("/api/kick-reason", json=kick, headers=AUTH)).json()
            missing = await http.get("/api/job", params={"id": 999_999})
    assert (listed["buried"], listed["recorded"], listed["unrecorded"]) == (3, 2, 1)
    first, second = listed["jobs"]
    assert (first["id"], first["cause"]) == (ids[0], "handler_bury")
    assert first["reason"] == "no such user"
    assert first["attempts"] == 1  # beanstalkd's buries
    assert first["preview"]["kind"] == "JSON"
    assert first["preview"]["text"].startswith('{\n  "task": "send"')
    assert second["preview"]["kind"] == "binary"
    assert second["preview"]["text"].startswith("00000000  00 01 02 03")
    assert detail["body"]["kind"] == "text"
    assert len(detail["body"]["text"]) <= DETAIL_LIMIT
    assert "download it for the whole body" in detail["body"]["note"]
    assert download.content == big
    assert download.headers["content-disposition"] == f'attachment; filename="job-{ids[2]}.bin"'
    assert download.headers["content-type"] == "application/octet-stream"
    assert peeked["id"] == ids[0]
    assert kicked["kicked"] == 1
    assert missing.status_code == 404
    assert no_ready.status_code == 404


async def test_given_a_page_listening_then_changes_arrive_as_tubes_events(
    beanstalkd: BeanstalkdProcess,
) -> None:
    with trio.fail_after(20):
        async with serving(beanstalkd, interval=0.2) as http:
            url = str(http.base_url).replace("http://", "ws://") + "/events?view=dashboard"
            async with open_websocket_url(url) as ws:
                assert json.loads(await ws.get_message())["type"] == "hello"
                await put_in_tubes(beanstalkd.address, [("live", b"1"), ("live", b"2")])
                while True:
                    event = json.loads(await ws.get_message())
                    rows = [r for r in event.get("rows", ()) if r["tube"] == "live"]
                    if event["type"] == "tubes" and rows and rows[0]["ready"] == 2:
                        break
    assert event["totals"]["ready"] >= 2
    assert rows[0]["key"] == f"{beanstalkd.address}|live"


async def test_given_a_remote_daemon_then_workers_apis_and_pause_reasons_come_from_it(
    beanstalkd: BeanstalkdProcess,
) -> None:
    status = {
        "host": "worker-7",
        "pid": 4242,
        "started": 1.0,
        "draining": False,
        "quiet": False,
        "jobs_running": 2,
        "counters": {"deleted": 10},
        "pools": {"pay": {"tubes": ["payments"], "slots": 20, "jobs": 2}},
        "apis": {"stripe": {"state": "open", "calls": 9, "failures": 9, "next_probe_in": 12.0}},
        "flow_pauses": {"stripe": ["payments"]},
        "tube_outcomes": {"payments": {"deleted": 10, "released": 9}},
    }
    await put_in_tubes(beanstalkd.address, [("payments", b"{}")])
    async with open_client(beanstalkd.address) as client:
        await client.pause_tube("payments", 60)
    with trio.fail_after(30):
        async with open_http_api() as daemon:
            daemon.reply = Reply(
                200, (("content-type", "application/json"),), json.dumps(status).encode()
            )
            async with serving(beanstalkd, daemons=[f"127.0.0.1:{daemon.port}"]) as http:
                workers = (await http.get("/api/workers")).json()["workers"]
                apis = (await http.get("/api/apis")).json()
                quiet = {"worker": daemon.url, "action": "quiet"}
                answer = await http.post("/api/worker", json=quiet, headers=AUTH)
                stranger = {"worker": "http://10.9.9.9:9090", "action": "quiet"}
                refused = await http.post("/api/worker", json=stranger, headers=AUTH)
    (worker,) = workers
    assert (worker["host"], worker["pid"], worker["concurrency"], worker["in_flight"]) == (
        "worker-7",
        4242,
        20,
        2,
    )
    assert worker["pools"] == [{"name": "pay", "tubes": ["payments"], "concurrency": 20, "jobs": 2}]
    assert apis["apis"][0]["api"] == "stripe"
    assert apis["apis"][0]["state"] == "open"
    (paused,) = apis["paused"]
    assert paused["tube"] == "payments"
    assert paused["reason"] == "flow control: API stripe is open"
    assert answer.status_code == 200
    assert "/quiet" in daemon.requests
    assert refused.status_code == 400  # only the configured daemons are ever contacted


async def fetch_modules(http: httpx.AsyncClient, path: str) -> dict[str, httpx.Response]:
    """A JavaScript module and every module it imports (``from "./x.js"``), by file name."""
    found: dict[str, httpx.Response] = {}
    wanted = [path]
    while wanted:
        name = wanted.pop().rsplit("/", 1)[-1]
        if name in found:
            continue
        found[name] = response = await http.get(f"/static/{name}")
        wanted += re.findall(r'from "\./([\w-]+\.js)"', response.text)
    return found


async def test_given_the_page_then_it_is_served_whole_with_no_token_in_it(
    beanstalkd: BeanstalkdProcess,
) -> None:
    with trio.fail_after(20):
        async with serving(beanstalkd) as http:
            index = await http.get("/")
            scripts = await fetch_modules(http, "/static/main.js")
            style = await http.get("/static/style.css")
            escape = await http.get("/static/../dashboard.py")
            unknown = await http.get("/api/nope")
            wrong_method = await http.get("/api/kick")
    assert index.status_code == 200
    assert index.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in index.headers["content-security-policy"]
    assert '<script type="module" src="/static/main.js">' in index.text
    assert set(scripts) >= {"main.js", "common.js", "actions.js", "overview.js"}
    for script in scripts.values():  # every module the page imports, served as a script
        assert script.status_code == 200
        assert script.headers["content-type"].startswith("text/javascript")
    assert style.status_code == 200
    for response in (index, *scripts.values(), style):
        assert TOKEN not in response.text
    shipped = files("tubeworker.control").joinpath("static")
    assert {entry.name for entry in shipped.iterdir()} >= {"index.html", *scripts, "style.css"}
    assert escape.status_code == 404
    assert unknown.status_code == 404
    assert wrong_method.status_code == 405


async def test_given_another_sites_name_or_origin_then_the_dashboard_refuses_it(
    beanstalkd: BeanstalkdProcess,
) -> None:
    # A page of another site that re-points its name at 127.0.0.1 (DNS rebinding) sends
    # that name as Host; a page of another site opening a WebSocket sends its Origin.
    with trio.fail_after(20):
        async with serving(beanstalkd) as http:
            rebound = await http.get("/api/tubes", headers={"Host": "evil.example:80"})
            by_name = await http.get("/api/tubes", headers={"Host": "localhost"})
            by_ip = await http.get("/api/tubes")  # Host: 127.0.0.1:PORT
            # The opening handshake of a WebSocket, as a page of evil.example sends it.
            upgrade = await http.get(
                "/events",
                headers={
                    "Connection": "Upgrade",
                    "Upgrade": "websocket",
                    "Sec-WebSocket-Version": "13",
                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                    "Origin": "http://evil.example",
                },
            )
    assert rebound.status_code == 403
    assert "allowed_hosts" in rebound.json()["error"]
    assert by_name.status_code == 200
    assert by_ip.status_code == 200
    assert upgrade.status_code == 403  # closed before the handshake: refused


async def test_given_a_burial_with_a_traceback_then_the_job_panel_gets_it_once_per_job(
    beanstalkd: BeanstalkdProcess,
) -> None:
    address = beanstalkd.address
    failed, bad = await put_in_tubes(address, [("graves", b"{}"), ("graves", b"x")])
    await bury_all(address, "graves")
    traceback = 'Traceback (most recent call last):\n  File "h.py", line 3\nValueError: no\n'
    async with open_client(address) as client:
        stats = await client.stats_job(failed)
        await write_record(client, new_record(failed, stats, "handler_error", "old", 1))
        await client.kick_job(failed)  # kicked, run again and buried again
        await client.reserve_job(failed)
        stats = await client.stats_job(failed)
        await client.bury(failed)
        record = new_record(
            failed, stats, "handler_error", "ValueError: no", 2, traceback=traceback
        )
        await write_record(client, record)
        stats = await client.stats_job(bad)
        await write_record(client, new_record(bad, stats, "bad_body", "not JSON", 1))
    with trio.fail_after(30):
        async with serving(beanstalkd) as http:
            listed = (await http.get("/api/buried", params={"tube": "graves"})).json()
    assert (listed["buried"], listed["recorded"]) == (2, 2)
    jobs = {job["id"]: job for job in listed["jobs"]}
    assert (jobs[failed]["reason"], jobs[failed]["traceback"]) == ("ValueError: no", traceback)
    assert jobs[bad]["traceback"] is None
