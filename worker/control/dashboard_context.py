"""What the dashboard's read routes (``dashboard_reads``) and action routes
(``dashboard_actions``) share: the poller's depths, the board, the fleet, the event bus, the
configured servers and token, and the parsing of a request's arguments (every value a page
sends is checked here, with a 400 for what is wrong)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import trio

from tubeworker.admin_ops import parse_duration, parse_int, parse_job_id
from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import Address
from tubeworker.beanstalk.protocol import MAX_INT
from tubeworker.config_model import HeartbeatConfig, ScheduleConfig
from tubeworker.control.asgi import Response
from tubeworker.control.board import TubeBoard
from tubeworker.control.fleet import Fleet
from tubeworker.control.poller import TubeDepths
from tubeworker.observe.events import EventBus

__all__ = [
    "FIRST_ROUND_WAIT",
    "Action",
    "BadRequest",
    "DashboardContext",
    "Read",
    "job_id_of",
    "number_of",
    "seconds_of",
    "tube_of",
]

FIRST_ROUND_WAIT: Final = 5.0  # a first view waits this long for a round of every tube

#: A read route: the query's parameters → the response.
Read = Callable[[dict[str, str]], Awaitable[Response]]
#: An action route: the request's JSON object → what it did (answered with ``ok``).
Action = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class BadRequest(Exception):
    """The request names something wrong: 400 with the message."""


@dataclass
class DashboardContext:
    """The parts every route reads, and the little state the routes keep."""

    servers: Mapping[str, Address]
    depths: TubeDepths
    board: TubeBoard
    fleet: Fleet
    events: EventBus
    token: str | None
    interval: float
    #: (server, tube) → (seconds, wall time): pauses made from this dashboard.
    paused_here: dict[tuple[str, str], tuple[int, float]] = field(default_factory=dict)
    #: The daemon's [[schedule]] and [[heartbeat]] tables (none: `tubeworker dashboard`
    #: has no config), and the servers its clock keeps ticks on, in order.
    schedules: tuple[ScheduleConfig, ...] = ()
    heartbeats: tuple[HeartbeatConfig, ...] = ()
    clock_servers: tuple[Address, ...] = ()

    @classmethod
    def of(
        cls,
        *,
        servers: Sequence[Address],
        depths: TubeDepths,
        board: TubeBoard,
        fleet: Fleet,
        events: EventBus,
        token: str | None,
        interval: float,
    ) -> DashboardContext:
        return cls(
            servers={str(address): address for address in servers},
            depths=depths,
            board=board,
            fleet=fleet,
            events=events,
            token=token,
            interval=interval,
        )

    @property
    def actions_enabled(self) -> bool:
        """Actions need the token: with none configured the dashboard is read-only (no
        token could ever be accepted, so the page offers no actions)."""
        return self.token is not None

    def server(self, params: Mapping[str, Any]) -> Address:
        """The server a request names (it may name none when there is one)."""
        name = params.get("server")
        if not name and len(self.servers) == 1:
            return next(iter(self.servers.values()))
        address = self.servers.get(str(name))
        if address is None:
            raise BadRequest(f"unknown server {name!r}: one of {sorted(self.servers)}")
        return address

    async def wait_for_every_tube(self) -> None:
        """A first view: wait (a little) for a round that asked for every tube."""
        with trio.move_on_after(FIRST_ROUND_WAIT):
            while not self.depths.last_round_every_tube:
                await self.depths.wait_round()

    def pause_reason(self, server: str, tube: str) -> str | None:
        """Why a tube is paused: flow control, this dashboard, or someone else."""
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


def tube_of(params: Mapping[str, Any]) -> str:
    tube = params.get("tube")
    if not isinstance(tube, str):
        raise BadRequest("a tube is needed")
    p.validate_tube_name(tube)
    return tube


def job_id_of(params: Mapping[str, Any]) -> int:
    return parse_job_id(str(params.get("id", "")))


def number_of(params: Mapping[str, Any], name: str, default: int, high: int = MAX_INT) -> int:
    value = params.get(name)
    if value is None or value == "":
        return default
    return parse_int(str(value), name, 0, high)


def seconds_of(params: Mapping[str, Any], name: str, default: int) -> int:
    value = params.get(name)
    if value is None or value == "":
        return default
    return parse_duration(str(value), name)
