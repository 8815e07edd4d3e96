"""The web dashboard: its static page (``static/``: HTML, CSS and plain JavaScript, no build
step) and the JSON endpoints it reads and acts through, mounted in the control plane
(``tubeworker run --control``) or served alone (``tubeworker dashboard``).

Reads (no token, like the rest of the control plane: keep it on loopback)::

    GET /                          the page
    GET /api/overview              totals, their recent history, servers and their errors
    GET /api/tubes?q=&sort=&desc=&page=&per_page=&internal=1   one page of tubes (from the
                                   poller; tubeworker's own, tubeworker.*, with internal=1)
    GET /api/tube?server=&tube=    one tube, its history, why it is paused
    GET /api/buried?server=&tube=&offset=&limit=       buried jobs with their reasons
    GET /api/job?server=&id=       a job: stats and its body, rendered safely
    GET /api/job/body?server=&id=  the body's bytes, as a download
    GET /api/peek?server=&tube=&state=ready|delayed|buried
    GET /api/workers, /api/apis    the daemons' status; breakers; paused tubes and why

Actions (``Authorization: Bearer <token>``, 401 without it; each one a log line; with no
token configured the dashboard is read-only: 403, and ``/api/overview`` says
``"actions_enabled": false`` so the page shows none)::

    POST /api/kick {server, tube, count?}        POST /api/kick-job {server, id}
    POST /api/kick-reason {server, tube, reason} POST /api/delete {server, id}
    POST /api/pause {server, tube, seconds}      POST /api/put {server, tube, body, ...}
    POST /api/worker {worker, action: quiet|resume}
    GET /api/schedules, POST /api/schedule {name, action, seconds}: dashboard_schedules
    GET /api/servers: each beanstalkd's own stats (dashboard_servers)
    GET /api/jobs, POST /api/move: the job browser (dashboard_browse)
    GET /api/batches, /api/batch?server=&id=: the batches and one batch (dashboard_batches)

``POST /api/refresh`` (no token) asks the tube poller for a round soon; the poller keeps
its own minimum gap, so viewers never set the rate of ``stats-tube``. Tube data comes from
that poller's snapshot (``TubeBoard``), never from a request's own polling; the servers and
daemons a request may name are the configured ones only. The poller asks for every tube,
and the fleet poller reads the daemons, whether or not a page is open: the board keeps
their history (``/api/overview``'s ``trend`` and ``history``) for the next page.

Three modules: this one routes (Host check, static files, the token, the deadline, the
log line of an action); ``dashboard_reads`` answers the reads and ``dashboard_actions``
does the actions, over what both share (``dashboard_context``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from importlib.resources import files
from typing import Any, Final

import structlog
import trio

from tubeworker.admin_ops import (
    EX_DATAERR,
    EX_NOINPUT,
    EX_UNAVAILABLE,
    EX_USAGE,
    EXPECTED,
    error_line,
)
from tubeworker.audit import record
from tubeworker.beanstalk.client import Address
from tubeworker.config_model import HeartbeatConfig, ScheduleConfig
from tubeworker.control.access import Access
from tubeworker.control.asgi import (
    BodyTooLarge,
    Receive,
    Response,
    Scope,
    Send,
    json_response,
    query,
    read_body,
    respond,
    trusted_host,
)
from tubeworker.control.board import TubeBoard
from tubeworker.control.dashboard_actions import DashboardActions
from tubeworker.control.dashboard_batches import DashboardBatches
from tubeworker.control.dashboard_browse import DashboardBrowse
from tubeworker.control.dashboard_context import BadRequest, DashboardContext, Read
from tubeworker.control.dashboard_reads import DashboardReads
from tubeworker.control.dashboard_schedules import DashboardSchedules
from tubeworker.control.dashboard_servers import DashboardServers
from tubeworker.control.fleet import Fleet
from tubeworker.control.poller import TubeDepths
from tubeworker.observe.events import EventBus

__all__ = ["Dashboard"]

log = structlog.get_logger("tubeworker")

WATCH_SECONDS: Final = 60.0  # a page counts as open this long after it was last seen
REQUEST_DEADLINE: Final = 30.0
MAX_REQUEST_BODY: Final = 4 * 1024 * 1024
READ_ONLY: Final = (
    "read-only: no token is configured ([control] token_file, or tubeworker dashboard "
    "--token-file), so the dashboard takes no actions"
)
#: Fields of an action's request that its log line and ``action`` event repeat.
_LOGGED_FIELDS: Final = (
    "server",
    "tube",
    "id",
    "count",
    "seconds",
    "worker",
    "to",
    "state",
    "name",
)

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


def _load_static() -> dict[str, tuple[str, bytes]]:
    folder = files("tubeworker.control").joinpath("static")
    assets: dict[str, tuple[str, bytes]] = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _STATIC_TYPES:
            assets[entry.name] = (_STATIC_TYPES[suffix], entry.read_bytes())
    return assets


WITHHELD = "job bodies are shown to operators ([control] show_bodies_to)"


def withhold_bodies(response: Response) -> Response:
    """The same JSON with every job body and preview replaced by what it is withheld for."""
    status, _, body, headers = response

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for key, item in value.items():
                if key == "body" and isinstance(item, dict):
                    out[key] = {
                        "kind": "withheld",
                        "text": WITHHELD,
                        "note": "",
                        "size": item.get("size"),
                    }
                elif key == "preview" and isinstance(item, str):
                    out[key] = "(withheld)"
                else:
                    out[key] = walk(item)
            return out
        if isinstance(value, list):
            return [walk(item) for item in value]
        return value

    return json_response(status, walk(json.loads(body)), *headers)


class Dashboard:
    """The dashboard's routes: the page, the reads, the actions (token-guarded)."""

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
        schedules: Sequence[ScheduleConfig] = (),
        heartbeats: Sequence[HeartbeatConfig] = (),
        access: Access | None = None,
    ) -> None:
        #: Who may read, see bodies, and act (control/access.py).
        self.access = access or Access(token)
        self.context = DashboardContext.of(
            servers=servers,
            depths=depths,
            board=board,
            fleet=fleet,
            events=events,
            token=token,
            interval=interval,
        )
        self.context.schedules = tuple(schedules)
        self.context.heartbeats = tuple(heartbeats)
        self.context.clock_servers = tuple(servers)
        #: Host names a browser may reach it under, besides IP addresses and localhost.
        self.allowed_hosts = tuple(allowed_hosts)
        self.static = _load_static()
        self.reads = DashboardReads(self.context)
        self.actions = DashboardActions(self.context)
        clock = DashboardSchedules(self.context)
        health = DashboardServers(self.context)
        browse = DashboardBrowse(self.context)
        batches = DashboardBatches(self.context)
        self._reads = {
            **self.reads.routes(),
            **clock.reads(),
            **health.reads(),
            **browse.reads(),
            **batches.reads(),
        }
        self._actions = {**self.actions.routes(), **clock.actions(), **browse.actions()}
        # The history a page shows when it opens is kept before it opens: every tube is
        # polled at every round, whether or not a page is open (the board samples them).
        depths.watch_every_tube(math.inf)
        self._viewed_until = -math.inf
        board.viewed = self.viewed

    @staticmethod
    def handles(path: str) -> bool:
        return path in ("/", "/index.html") or path.startswith(("/static/", "/api/"))

    def watch(self) -> None:
        """A page is being looked at: its ``tubes`` events are built for the next
        WATCH_SECONDS (and the daemons are read again now, when it starts)."""
        now = time.monotonic()
        if now >= self._viewed_until:
            self.context.fleet.poke()
        self._viewed_until = now + WATCH_SECONDS

    def viewed(self) -> bool:
        """Whether a page was looked at in the last WATCH_SECONDS."""
        return time.monotonic() < self._viewed_until

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
        elif method == "GET" and path in self._reads:
            response = await self._read(scope, path)
        elif method == "POST" and path == "/api/refresh":  # a read's nudge: a reader's
            refused = self.access.check_read(scope, path)
            if refused is not None:
                response = json_response(refused[0], {"error": refused[1]})
            else:
                self.context.depths.poke()
                response = json_response(202, {"ok": True})
        elif method == "POST" and path in self._actions:
            response = await self._act(scope, receive, path)
        elif path in self._reads or path in self._actions:
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

    async def _read(self, scope: Scope, path: str) -> Response:
        """A read, if this reader may: bodies withheld from those who may not see them."""
        refused = self.access.check_read(scope, path)
        if refused is not None:
            return json_response(refused[0], {"error": refused[1]})
        role = self.access.role(scope)
        bodies = self.access.sees_bodies(role)
        if not bodies and path == "/api/job/body":
            return json_response(403, {"error": WITHHELD})
        response = await self._guarded(self._reads[path], query(scope))
        if path == "/api/overview" and response[0] == 200:  # the page shows what it may do
            status, _, body, headers = response
            reader = {"role": role, "reads_need_token": not self.access.reads_open}
            response = json_response(status, {**json.loads(body), **reader}, *headers)
        if bodies or response[1] != "application/json":
            return response
        return withhold_bodies(response)

    async def _guarded(self, route: Read, params: dict[str, str]) -> Response:
        self.watch()
        try:
            with trio.fail_after(REQUEST_DEADLINE):
                return await route(params)
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
        if not self.context.actions_enabled:
            log.warning(
                "dashboard action refused", action=name, client=client, why="no token configured"
            )
            return json_response(403, {"error": READ_ONLY})
        refused = self.access.check_action(scope)  # a wrong token counts as a failure
        if refused is not None:
            status, error, why = refused
            log.warning("dashboard action refused", action=name, client=client, why=why)
            return json_response(status, {"error": error})
        try:
            data = json.loads(await read_body(receive, MAX_REQUEST_BODY) or b"{}")
        except (BodyTooLarge, ValueError) as exc:
            return json_response(400, {"error": f"the request body is not a JSON object: {exc}"})
        if not isinstance(data, dict):
            return json_response(400, {"error": "the request body is not a JSON object"})
        action = self._actions[path]

        async def run(_: dict[str, str]) -> Response:
            return json_response(200, {"ok": True, **await action(data)})

        response = await self._guarded(run, {})
        self._log_action(name, client, data, response)
        await self._audit(f"{self.access.who(scope)} (dashboard)", name, client, data, response)
        return response

    async def _audit(
        self, who: str, name: str, client: str, data: dict[str, Any], response: Response
    ) -> None:
        """The action on the audit trail of the server it acted on (else the first)."""
        try:
            address = self.context.server(data)
        except BadRequest:
            first = next(iter(self.context.servers.values()), None)
            if first is None:
                return
            address = first
        fields = {k: data[k] for k in _LOGGED_FIELDS if k in data}
        outcome = json.loads(response[2])
        result = "ok" if response[0] == 200 else f"failed ({response[0]}): {outcome.get('error')}"
        with trio.CancelScope(shield=True), trio.move_on_after(REQUEST_DEADLINE):
            await record(
                address,
                who=who,
                where=client,
                what=name,
                target=json.dumps(fields, sort_keys=True),
                result=result,
            )

    def _log_action(self, name: str, client: str, data: dict[str, Any], response: Response) -> None:
        """One line per action: what it was asked, and what it did or why it failed."""
        status = response[0]
        outcome = json.loads(response[2])
        fields: dict[str, Any] = {k: data[k] for k in _LOGGED_FIELDS if k in data}
        if "reason" in data:
            fields["reason_text"] = data["reason"]
        if "action" in data:  # the worker's: quiet or resume
            fields["worker_action"] = data["action"]
        if status == 200:
            outcome.pop("ok", None)
            log.info("dashboard action", action=name, client=client, **{**fields, **outcome})
            self.context.events.publish("action", action=name, **fields, result=outcome)
        else:
            log.warning(
                "dashboard action failed",
                action=name,
                client=client,
                status=status,
                **fields,
                error=outcome.get("error"),
            )
