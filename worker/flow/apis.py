"""Flow control in the daemon: the API tracker built from ``[api.NAME]``, its transitions
told to the log, the metrics and live viewers, and outages made fleet-wide by pausing the
tubes bound to an open API on every server.

How the pieces fit (the breakers themselves are ``tubeworker.flow``):

- Lanes stop *watching* a tube whose jobs all need an open API (``[api.NAME] tubes``), so
  nothing of it is reserved; a pool whose tubes are all blocked waits for the next probe.
- A job reserved for an API that is open (a handler's ``@handler(apis=[...])``, or its
  tube's binding) does not run: it is held, touched so its TTR never runs out, until its
  APIs admit it (as a probe when half-open). Holding burns no attempt: beanstalkd's
  counters do not move for a touch. On drain it is handed back with its connection, an
  excused redelivery.
- ``pause_tubes = true``: the tubes are ``pause-tube``d on their servers for the rest of
  the cool-down, re-applied every few seconds while the API stays open (a pause is lost
  when beanstalkd restarts or frees the tube), and lifted when probing starts, so every
  worker on that beanstalkd, in any language, backs off together.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import greenstalk
import structlog
import trio

from tubeworker.beanstalk.client import Address, Client, connect
from tubeworker.config import ApiConfig, Config
from tubeworker.errors import ConnectionLostError, ProtocolError
from tubeworker.flow import ApiSettings, ApiTracker, BreakerSettings, BreakerState, Transition
from tubeworker.observe.events import EventBus

__all__ = ["build_tracker", "log_transitions", "run_tube_pauser", "tube_apis"]

log = structlog.get_logger("tubeworker")

_REAPPLY = 5.0  # seconds between re-applying the pauses of open APIs


def build_tracker(config: Config) -> ApiTracker:
    """One tracker per process, on Trio's clock (build it inside ``trio.run``)."""
    return ApiTracker(
        {api.name: ApiSettings(hosts=api.hosts, breaker=_breaker(api)) for api in config.apis},
        clock=trio.current_time,
        warn=_warn,
    )


def _warn(event: str, fields: Mapping[str, object]) -> None:
    log.warning(event, **fields)


def _breaker(api: ApiConfig) -> BreakerSettings:
    return BreakerSettings(
        window=api.window,
        failure_rate=api.failure_rate,
        min_calls=api.min_calls,
        consecutive_failures=api.consecutive_failures,
        cooldown=api.cooldown,
        cooldown_cap=api.cooldown_cap,
        probes=api.probes,
    )


def tube_apis(config: Config) -> Mapping[str, frozenset[str]]:
    """The APIs every job of a tube needs, from ``[api.NAME] tubes``."""
    found: dict[str, set[str]] = {}
    for api in config.apis:
        for tube in api.tubes:
            found.setdefault(tube, set()).add(api.name)
    return {tube: frozenset(apis) for tube, apis in found.items()}


def log_transitions(tracker: ApiTracker, events: EventBus) -> None:
    """Every breaker transition: one log line and one live event (listeners run inside
    the call that caused them, so this only logs and queues)."""

    def told(transition: Transition) -> None:
        now = trio.current_time()
        fields: dict[str, object] = {
            "api": transition.api,
            "state": transition.to_state.value,
            "reason": transition.reason.value,
        }
        if transition.next_probe_at is not None:
            fields["next_probe_in"] = round(max(0.0, transition.next_probe_at - now), 1)
        if transition.to_state is BreakerState.OPEN:
            log.warning("api breaker open: its jobs wait", **fields)
        else:
            log.info(f"api breaker {transition.to_state.value}", **fields)
        events.publish("breaker", **fields)

    tracker.add_listener(told)


async def run_tube_pauser(config: Config, tracker: ApiTracker, servers: Sequence[Address]) -> None:
    """Keep the tubes of open APIs with ``pause_tubes`` paused on every server."""
    apis = [api for api in config.apis if api.pause_tubes and api.tubes]
    if not apis:
        return
    changed = trio.Event()

    def on_transition(transition: Transition) -> None:
        changed.set()

    tracker.add_listener(on_transition)
    clients: dict[Address, Client] = {}
    paused: set[str] = set()  # APIs whose tubes we paused
    try:
        while True:
            with trio.move_on_after(_REAPPLY if paused else math.inf):
                await changed.wait()
            changed = trio.Event()
            paused = await _apply_pauses(config, tracker, apis, servers, clients, paused)
    finally:
        with trio.CancelScope(shield=True):
            for client in clients.values():
                await client.aclose()


async def _apply_pauses(
    config: Config,
    tracker: ApiTracker,
    apis: Sequence[ApiConfig],
    servers: Sequence[Address],
    clients: dict[Address, Client],
    paused: set[str],
) -> set[str]:
    now_paused: set[str] = set()
    for api in apis:
        stats = tracker.statistics().of(api.name)
        open_for = 0
        if stats is not None and stats.state is BreakerState.OPEN and stats.next_probe_at:
            open_for = math.ceil(max(0.0, stats.next_probe_at - trio.current_time()))
        if open_for == 0 and api.name not in paused:
            continue  # neither open nor paused by us: nothing to say
        for address in servers:
            for tube in api.tubes:
                await _pause(config, clients, address, tube, open_for)
        if open_for:
            now_paused.add(api.name)
        if open_for and api.name not in paused:
            log.warning(
                "tubes paused on the servers", api=api.name, tubes=api.tubes, seconds=open_for
            )
        elif not open_for:
            log.info("tubes resumed on the servers", api=api.name, tubes=api.tubes)
    return now_paused


async def _pause(
    config: Config, clients: dict[Address, Client], address: Address, tube: str, seconds: int
) -> None:
    try:
        client = clients.get(address)
        if client is None or not client.is_usable:
            client = clients[address] = await connect(
                address, connect_timeout=config.connect_timeout, reply_timeout=config.reply_timeout
            )
        with trio.fail_after(config.reply_timeout):
            await client.pause_tube(tube, seconds)
    except (ConnectionLostError, ProtocolError, trio.TooSlowError, OSError) as exc:
        # Re-applied on the next round; the lanes of this process stop on their own anyway.
        log.warning("cannot pause tube", server=str(address), tube=tube, error=str(exc))
    except greenstalk.Error as exc:  # an error reply: said, and tried again next round
        log.warning("cannot pause tube", server=str(address), tube=tube, error=repr(exc))
