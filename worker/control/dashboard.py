"""The web dashboard: its static page (``static/``: HTML, CSS and plain JavaScript, no build
step) and the JSON endpoints it reads and acts through, mounted in the control plane
(``tubeworker run --control``) or served alone (``tubeworker dashboard``).

Reads (no token, like the rest of the control plane: keep it on loopback)::

    GET /                          the page
    GET /api/overview              totals, their recent history, servers and their errors
    GET /api/tubes?q=&sort=&desc=&page=&per_page=      one page of tubes (from the poller)
    GET /api/tube?server=&tube=    one tube, its history, why it is paused
    GET /api/buried?server=&tube=&offset=&limit=       buried jobs with their reasons
    GET /api/job?server=&id=       a job: stats and its body, rendered safely
    GET /api/job/body?server=&id=  the body's bytes, as a download
    GET /api/peek?server=&tube=&state=ready|delayed|buried
    GET /api/workers, /api/apis    the daemons' status; breakers; paused tubes and why

Actions (``Authorization: Bearer <token>``, 401 without it; each one a log line)::

    POST /api/kick {server, tube, count?}        POST /api/kick-job {server, id}
    POST /api/kick-reason {server, tube, reason} POST /api/delete {server, id}
    POST /api/pause {server, tube, seconds}      POST /api/put {server, tube, body, ...}
    POST /api/worker {worker, action: quiet|resume}

``POST /api/refresh`` (no token) asks the tube poller for a round soon; the poller keeps
its own minimum gap, so viewers never set the rate of ``stats-tube``. Tube data comes from
that poller's snapshot (``TubeBoard``), never from a request's own polling; the servers and
daemons a request may name are the configured ones only.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from importlib.resources import files
from typing import Any, Final
from urllib.parse import quote

import greenstalk
import httpx
import structlog
import trio

from tubeworker.admin_ops import (
    EX_DATAERR,
    EX_NOINPUT,
    EX_UNAVAILABLE,
    EX_USAGE,
    EXPECTED,
    AdminError,
    admin_client,
    attempts,
    buried_records,
    delete_job,
    error_line,
    kick_buried,
    kick_by_reason,
    kick_job,
    parse_duration,
    parse_int,
    parse_job_id,
    pause_tube,
    peek_job,
    put_job,
    render_body,
    task_of,
)
from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import Address
from tubeworker.beanstalk.protocol import DEFAULT_PRIORITY, DEFAULT_TTR, MAX_INT
from tubeworker.control.asgi import (
    BodyTooLarge,
    Receive,
    Response,
    Scope,
    Send,
    authorized,
    json_response,
    query,
    read_body,
    respond,
    trusted_host,
)
from tubeworker.control.board import TubeBoard
from tubeworker.control.fleet import Fleet
from tubeworker.control.metrics import TubeDepths
from tubeworker.observe.events import EventBus

__all__ = ["Dashboard"]

log = structlog.get_logger("tubeworker")

WATCH_SECONDS: Final = 60.0  # every tube is polled this long after the page was last seen
FIRST_ROUND_WAIT: Final = 5.0  # a first view waits this long for a round of every tube
REQUEST_DEADLINE: Final = 30.0
MAX_REQUEST_BODY: Final = 4 * 1024 * 1024
PREVIEW_LIMIT: Final = 240  # characters of a buried job's body in the list
DETAIL_LIMIT: Final = 16 * 1024  # of a job's body in its detail; the rest is a download
BURIED_READ_LIMIT: Final = 1000  # burial records read per request
DOWNLOAD_HINT: Final = "download it for the whole body"

_STATUS_OF_CODE: Final = {
    EX_NOINPUT: 404,
    EX_DATAERR: 400,
    EX_USAGE: 400,
    EX_UNAVAILABLE: 503,
}
_STATIC_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# The page loads only its own files and talks only to its own origin (and /events on it).
_PAGE_HEADERS: Final = (
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)


class BadRequest(Exception):
    """The request names something wrong: 400 with the message."""


def _load_static() -> dict[str, tuple[str, bytes]]:
    folder = files("tubeworker.control").joinpath("static")
    assets: dict[str, tuple[str, bytes]] = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _STATIC_TYPES:
            assets[entry.name] = (_STATIC_TYPES[suffix], entry.read_bytes())
    return assets


def _rendered(body: bytes, limit: int) -> dict[str, Any]:
    shown = render_body(body, limit, hint=DOWNLOAD_HINT)
    return {"kind": shown.kind, "text": shown.text, "note": shown.note, "size": len(body)}


Handler = Callable[["Dashboard", Scope, dict[str, str]], Awaitable[Response]]
Action = Callable[["Dashboard", Scope, dict[str, Any]], Awaitable[dict[str, Any]]]


class Dashboard:
    """The dashboard's routes, over the poller's depths, the board and the fleet."""

    def __init__(
        self,
        *,
        servers: Sequence[Address],
        depths: TubeDepths,
        board: TubeBoard,
        fleet: Fleet,
        events: EventBus,
        token: str | None,
        interval: float,
        allowed_hosts: Sequence[str] = (),
    ) -> None:
        self.servers = {str(address): address for address in servers}
        #: Host names a browser may reach it under, besides IP addresses and localhost.
        self.allowed_hosts = tuple(allowed_hosts)
        self.depths = depths
        self.board = board
        self.fleet = fleet
        self.events = events
        self.token = token
        self.interval = interval
        self.static = _load_static()
        #: (server, tube) → (seconds, wall time): pauses made from this dashboard.
        self.paused_here: dict[tuple[str, str], tuple[int, float]] = {}

    @staticmethod
    def handles(path: str) -> bool:
        return path in ("/", "/index.html") or path.startswith(("/static/", "/api/"))

    def watch(self) -> None:
        """The page is being looked at: every tube is polled, and the daemons are read, for
        the next WATCH_SECONDS (the pollers are woken when this starts)."""
        if not self.depths.every_tube:
            self.fleet.poke()
        self.depths.watch_every_tube(WATCH_SECONDS)

    async def keep_watching(self) -> None:
        """While a page listens to /events: keep watching."""
        while True:
            self.watch()
            await trio.sleep(WATCH_SECONDS / 3)

    # ------------------------------------------------------------------ HTTP

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        if not trusted_host(scope, self.allowed_hosts):
            log.warning("dashboard request refused: untrusted Host", path=path)
            response = json_response(
                403,
                {
                    "error": "this host name is not allowed: open the dashboard by IP "
                    "address or localhost, or add the name to [control] allowed_hosts"
                },
            )
        elif path in ("/", "/index.html") or path.startswith("/static/"):
            response = self._asset(method, path)
        elif method == "GET" and path in _READS:
            response = await self._guarded(_READS[path], scope, query(scope))
        elif method == "POST" and path == "/api/refresh":
            self.depths.poke()
            response = json_response(202, {"ok": True})
        elif method == "POST" and path in _ACTIONS:
            response = await self._act(scope, receive, path)
        elif path in _READS or path in _ACTIONS:
            response = json_response(405, {"error": f"{method} not allowed here"})
        else:
            response = json_response(404, {"error": f"no such path: {path}"})
        await respond(send, response)

    def _asset(self, method: str, path: str) -> Response:
        if method != "GET":
            return json_response(405, {"error": f"{method} not allowed here"})
        name = "index.html" if path in ("/", "/index.html") else path.removeprefix("/static/")
        asset = self.static.get(name)
        if asset is None:
            return json_response(404, {"error": f"no such file: {path}"})
        content_type, body = asset
        return 200, content_type, body, _PAGE_HEADERS

    async def _guarded(self, handler: Handler, scope: Scope, params: dict[str, str]) -> Response:
        self.watch()
        try:
            with trio.fail_after(REQUEST_DEADLINE):
                return await handler(self, scope, params)
        except BadRequest as exc:
            return json_response(400, {"error": str(exc)})
        except EXPECTED as exc:  # LocalProtocolError (a bad tube name...) included
            message, code = error_line(exc)
            return json_response(_STATUS_OF_CODE.get(code, 502), {"error": message})
        except trio.TooSlowError:
            return json_response(504, {"error": f"no answer within {REQUEST_DEADLINE:g} s"})

    async def _act(self, scope: Scope, receive: Receive, path: str) -> Response:
        name = path.removeprefix("/api/")
        client = (scope.get("client") or ("?",))[0]
        if not authorized(scope, self.token):
            log.warning(
                "dashboard action refused", action=name, client=client, why="no or wrong token"
            )
            return json_response(
                401, {"error": "this action needs the control token (Authorization: Bearer)"}
            )
        try:
            data = json.loads(await read_body(receive, MAX_REQUEST_BODY) or b"{}")
        except (BodyTooLarge, ValueError) as exc:
            return json_response(400, {"error": f"the request body is not a JSON object: {exc}"})
        if not isinstance(data, dict):
            return json_response(400, {"error": "the request body is not a JSON object"})
        action = _ACTIONS[path]

        async def run(dashboard: Dashboard, scope: Scope, _: dict[str, str]) -> Response:
            result = await action(dashboard, scope, data)
            return json_response(200, {"ok": True, **result})

        response = await self._guarded(run, scope, {})
        status = response[0]
        outcome = json.loads(response[2])
        fields = {
            k: data[k] for k in ("server", "tube", "id", "count", "seconds", "worker") if k in data
        }
        if "reason" in data:
            fields["reason_text"] = data["reason"]
        if "action" in data:  # the worker's: quiet or resume
            fields["worker_action"] = data["action"]
        if status == 200:
            outcome.pop("ok", None)
            log.info("dashboard action", action=name, client=client, **{**fields, **outcome})
            self.events.publish("action", action=name, **fields, result=outcome)
        else:
            log.warning(
                "dashboard action failed",
                action=name,
                client=client,
                status=status,
                **fields,
                error=outcome.get("error"),
            )
        return response

    # ------------------------------------------------------------------ arguments

    def _server(self, params: Mapping[str, Any]) -> Address:
        name = params.get("server")
        if not name and len(self.servers) == 1:
            return next(iter(self.servers.values()))
        address = self.servers.get(str(name))
        if address is None:
            raise BadRequest(f"unknown server {name!r}: one of {sorted(self.servers)}")
        return address

    @staticmethod
    def _tube(params: Mapping[str, Any]) -> str:
        tube = params.get("tube")
        if not isinstance(tube, str):
            raise BadRequest("a tube is needed")
        p.validate_tube_name(tube)
        return tube

    @staticmethod
    def _job_id(params: Mapping[str, Any]) -> int:
        return parse_job_id(str(params.get("id", "")))

    @staticmethod
    def _number(params: Mapping[str, Any], name: str, default: int, high: int = MAX_INT) -> int:
        value = params.get(name)
        if value is None or value == "":
            return default
        return parse_int(str(value), name, 0, high)

    @staticmethod
    def _seconds(params: Mapping[str, Any], name: str, default: int) -> int:
        value = params.get(name)
        if value is None or value == "":
            return default
        return parse_duration(str(value), name)

    # ------------------------------------------------------------------ reads

    async def _wait_for_every_tube(self) -> None:
        """A first view: wait (a little) for a round that asked for every tube."""
        with trio.move_on_after(FIRST_ROUND_WAIT):
            while not self.depths.last_round_every_tube:
                await self.depths.wait_round()

    async def overview(self, scope: Scope, params: dict[str, str]) -> Response:
        await self._wait_for_every_tube()
        return json_response(
            200,
            {
                "round": self.board.round,
                "totals": self.board.totals(),
                "trend": list(self.board.totals_trend),
                "servers": sorted(self.servers),
                "errors": dict(self.depths.server_errors),
                "interval": self.interval,
                "sample_every": self.board.sample_every,
                "token_configured": self.token is not None,
                "workers": len(self.fleet.workers),
                "now": round(time.time(), 3),
            },
        )

    async def tubes(self, scope: Scope, params: dict[str, str]) -> Response:
        await self._wait_for_every_tube()
        page = self.board.page(
            q=params.get("q", ""),
            sort=params.get("sort", "tube"),
            desc=params.get("desc", "") in ("1", "true"),
            page=self._number(params, "page", 1),
            per_page=self._number(params, "per_page", 50),
        )
        return json_response(200, {**page, "totals": self.board.totals()})

    def pause_reason(self, server: str, tube: str) -> str | None:
        depth = self.depths.tubes.get((server, tube))
        if depth is None or depth.pause_left <= 0:
            return None
        apis = self.fleet.flow_pauses().get(tube)
        if apis:
            return f"flow control: API {', '.join(apis)} is open"
        here = self.paused_here.get((server, tube))
        if here is not None:
            at = time.strftime("%H:%M:%S", time.localtime(here[1]))
            return f"paused from the dashboard at {at} for {here[0]} s"
        return "paused by another client (tubeworker pause, or an application)"

    async def tube(self, scope: Scope, params: dict[str, str]) -> Response:
        address, tube = self._server(params), self._tube(params)
        key = (str(address), tube)
        if key not in self.depths.tubes:  # new since the last round: ask for one soon
            self.depths.poke()
            with trio.move_on_after(FIRST_ROUND_WAIT):
                await self.depths.wait_round()
                if key not in self.depths.tubes:
                    await self.depths.wait_round()  # the round asked before the poke
        depth = self.depths.tubes.get(key)
        if depth is None:
            return json_response(404, {"error": f"tube {tube!r} not seen on {address}"})
        return json_response(
            200,
            {
                **self.board.row(key, depth),
                "round": self.board.round,
                "trend": self.board.trend(key),
                "pause_reason": self.pause_reason(*key),
            },
        )

    async def buried(self, scope: Scope, params: dict[str, str]) -> Response:
        address, tube = self._server(params), self._tube(params)
        offset = self._number(params, "offset", 0)
        limit = max(1, min(self._number(params, "limit", 50), 200))
        count, records = await buried_records(address, tube, limit=BURIED_READ_LIMIT)
        records.sort(key=lambda pair: pair[0].job_id)
        shown = records[offset : offset + limit]
        previews = await self._previews(address, [record.job_id for record, _ in shown])
        capped = len(records) >= BURIED_READ_LIMIT
        jobs = [
            {
                "id": record.job_id,
                "age": stats.age,
                "attempts": attempts(stats),
                "kicks": stats.kicks,
                "priority": stats.pri,
                "cause": record.cause,
                "reason": record.reason,
                "traceback": record.traceback or None,
                "buried_at": record.buried_at,
                "preview": previews.get(record.job_id),
            }
            for record, stats in shown
        ]
        return json_response(
            200,
            {
                "server": str(address),
                "tube": tube,
                "buried": count,
                "recorded": len(records),
                "capped": capped,
                "unrecorded": None if capped else max(0, count - len(records)),
                "offset": offset,
                "limit": limit,
                "jobs": jobs,
            },
        )

    async def _previews(self, address: Address, ids: Sequence[int]) -> dict[int, Any]:
        previews: dict[int, Any] = {}
        if not ids:
            return previews
        async with admin_client(address) as client:
            for job_id in ids:
                try:
                    found = await client.peek(job_id)
                except greenstalk.NotFoundError:
                    continue
                previews[job_id] = _rendered(found.body, PREVIEW_LIMIT)
        return previews

    def _job_document(
        self, address: Address, found: p.Found, stats: p.JobStats | None
    ) -> dict[str, Any]:
        return {
            "server": str(address),
            "id": found.id,
            "stats": dataclasses.asdict(stats) if stats is not None else None,
            "task": task_of(found.body),
            "body": _rendered(found.body, DETAIL_LIMIT),
            "download": f"/api/job/body?server={quote(str(address))}&id={found.id}",
        }

    async def job(self, scope: Scope, params: dict[str, str]) -> Response:
        address = self._server(params)
        found, stats = await peek_job(address, str(self._job_id(params)), None)
        return json_response(200, self._job_document(address, found, stats))

    async def job_body(self, scope: Scope, params: dict[str, str]) -> Response:
        address, job_id = self._server(params), self._job_id(params)
        found, _ = await peek_job(address, str(job_id), None)
        disposition = f'attachment; filename="job-{job_id}.bin"'.encode()
        return 200, "application/octet-stream", found.body, ((b"content-disposition", disposition),)

    async def peek(self, scope: Scope, params: dict[str, str]) -> Response:
        address, tube = self._server(params), self._tube(params)
        state = params.get("state", "")
        if state not in ("ready", "delayed", "buried"):
            raise BadRequest("state must be ready, delayed or buried")
        found, stats = await peek_job(address, tube, state)
        return json_response(200, self._job_document(address, found, stats))

    async def workers(self, scope: Scope, params: dict[str, str]) -> Response:
        if self.fleet.unread:
            with trio.move_on_after(FIRST_ROUND_WAIT):
                await self.fleet.wait_refreshed()
        return json_response(200, {"workers": self.fleet.summaries()})

    async def apis(self, scope: Scope, params: dict[str, str]) -> Response:
        if self.fleet.unread:
            with trio.move_on_after(FIRST_ROUND_WAIT):
                await self.fleet.wait_refreshed()
        await self._wait_for_every_tube()
        paused = [
            {
                "server": server,
                "tube": tube,
                "pause": depth.pause,
                "pause_left": depth.pause_left,
                "reason": self.pause_reason(server, tube),
            }
            for (server, tube), depth in sorted(self.depths.tubes.items())
            if depth.pause_left > 0
        ]
        return json_response(200, {"apis": self.fleet.apis(), "paused": paused})

    # ------------------------------------------------------------------ actions

    async def kick(self, scope: Scope, data: dict[str, Any]) -> dict[str, Any]:
        address, tube = self._server(data), self._tube(data)
        bound = self._number(data, "count", MAX_INT) or MAX_INT
        kicked = await kick_buried(address, tube, bound)
        if kicked is None:
            raise AdminError(f"tube {tube!r} not found on {address}", EX_NOINPUT)
        self.depths.poke()
        return {"kicked": kicked}

    async def kick_job(self, scope: Scope, data: dict[str, Any]) -> dict[str, Any]:
        address, job_id = self._server(data), self._job_id(data)
        await kick_job(address, job_id)
        self.depths.poke()
        return {"kicked": 1}

    async def kick_reason(self, scope: Scope, data: dict[str, Any]) -> dict[str, Any]:
        address, tube = self._server(data), self._tube(data)
        text = data.get("reason")
        if not isinstance(text, str) or not text:
            raise BadRequest("a reason (text, or a cause) is needed")
        kicked = await kick_by_reason(address, tube, text)
        self.depths.poke()
        return {"kicked": kicked}

    async def delete(self, scope: Scope, data: dict[str, Any]) -> dict[str, Any]:
        address, job_id = self._server(data), self._job_id(data)
        async with admin_client(address) as client:
            deleted = await delete_job(client, job_id)
        if not deleted:
            raise AdminError(
                f"job {job_id} not found (or reserved by a worker: only its connection may "
                "delete it)",
                EX_NOINPUT,
            )
        self.depths.poke()
        return {"deleted": 1}

    async def pause(self, scope: Scope, data: dict[str, Any]) -> dict[str, Any]:
        address, tube = self._server(data), self._tube(data)
        seconds = self._seconds(data, "seconds", -1)
        if seconds < 0:
            raise BadRequest("seconds is needed (0 resumes)")
        if not await pause_tube(address, tube, seconds):
            raise AdminError(f"tube {tube!r} not found on {address}", EX_NOINPUT)
        if seconds:
            self.paused_here[(str(address), tube)] = (seconds, time.time())
        else:
            self.paused_here.pop((str(address), tube), None)
        self.depths.poke()
        return {"paused": seconds}

    async def put(self, scope: Scope, data: dict[str, Any]) -> dict[str, Any]:
        address, tube = self._server(data), self._tube(data)
        body = data.get("body")
        if not isinstance(body, str):
            raise BadRequest("body must be text")
        job_id = await put_job(
            address,
            tube,
            body.encode(),
            priority=self._number(data, "priority", DEFAULT_PRIORITY),
            delay=self._seconds(data, "delay", 0),
            ttr=self._seconds(data, "ttr", DEFAULT_TTR) or 1,
        )
        self.depths.poke()
        return {"id": job_id, "bytes": len(body.encode())}

    async def worker(self, scope: Scope, data: dict[str, Any]) -> dict[str, Any]:
        worker, action = data.get("worker"), data.get("action")
        if worker not in self.fleet.workers:
            raise BadRequest(f"unknown worker {worker!r}")
        if action not in ("quiet", "resume"):
            raise BadRequest("action must be quiet or resume")
        assert self.token is not None  # authorized
        try:
            async with httpx.AsyncClient(trust_env=False) as http:
                answer = await self.fleet.set_quiet(
                    str(worker), action == "quiet", self.token, http
                )
        except httpx.HTTPError as exc:
            raise AdminError(f"worker {worker} did not {action}: {exc}", EX_UNAVAILABLE) from None
        self.fleet.poke()
        return {"quiet": bool(answer.get("quiet", action == "quiet"))}


_READS: Final[dict[str, Handler]] = {
    "/api/overview": Dashboard.overview,
    "/api/tubes": Dashboard.tubes,
    "/api/tube": Dashboard.tube,
    "/api/buried": Dashboard.buried,
    "/api/job": Dashboard.job,
    "/api/job/body": Dashboard.job_body,
    "/api/peek": Dashboard.peek,
    "/api/workers": Dashboard.workers,
    "/api/apis": Dashboard.apis,
}
_ACTIONS: Final[dict[str, Action]] = {
    "/api/kick": Dashboard.kick,
    "/api/kick-job": Dashboard.kick_job,
    "/api/kick-reason": Dashboard.kick_reason,
    "/api/delete": Dashboard.delete,
    "/api/pause": Dashboard.pause,
    "/api/put": Dashboard.put,
    "/api/worker": Dashboard.worker,
}
