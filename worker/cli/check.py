"""``tubeworker check``: validate a config and show what would run, with the values that
apply (a handler's own options over its pool's).

Every problem is found in one pass and printed one a line (file, key, problem), exit 78.
A valid config is shown section by section: each section is one function of
``(config, registry)`` in :data:`SECTIONS`, printed in that order; a new section is a new
function added there.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from tubeworker.cli.admin import plural
from tubeworker.cli.startup import EX_CONFIG, EX_OK, load_all, print_problems
from tubeworker.config import ApiConfig, Config, LimitConfig, PoolConfig
from tubeworker.flow.tokens import token_shares, token_tubes
from tubeworker.registry import Registry
from tubeworker.runtime.dispatch import effective_policy
from tubeworker.runtime.pool import lane_sizes
from tubeworker.schedule import GRACE, fire_id, in_zone, next_fire
from tubeworker.tubes import matches_any

__all__ = ["SECTIONS", "check"]

Section = Callable[[Config, Registry], None]


def check(args: argparse.Namespace) -> int:
    loaded = load_all(args)
    if loaded.problems or loaded.config is None:
        print_problems(loaded.problems)
        return EX_CONFIG
    print(f"config: {loaded.config.source}")
    for section in SECTIONS:
        section(loaded.config, loaded.registry)
    print("ok")
    return EX_OK


def show_worker(config: Config, registry: Registry) -> None:
    print(f"servers: {', '.join(str(s) for s in config.servers)}")
    print(
        f"drain_timeout: {config.drain_timeout:g} s; "
        f"max_in_flight: {config.max_in_flight or config.total_concurrency}; "
        f"reply_timeout: {config.reply_timeout:g} s; keepalive: {config.keepalive:g} s"
    )


def show_pools(config: Config, registry: Registry) -> None:
    for pool in config.pools:
        _show_pool(pool, config, registry)


def _show_pool(pool: PoolConfig, config: Config, registry: Registry) -> None:
    print(f"pool {pool.name}:")
    patterns = "  (patterns: polled)" if pool.has_globs else ""
    print(f"  tubes: {', '.join(pool.tubes)}{patterns}")
    servers = len(pool.servers or config.servers)
    connections = len(lane_sizes(pool.concurrency, pool.jobs_per_connection, servers))
    print(
        f"  concurrency: {plural(pool.concurrency, 'job')} at once ({pool.profile} profile) "
        f"on {plural(connections, 'connection')} of up to "
        f"{plural(pool.jobs_per_connection, 'job')}"
    )
    policy = pool.retry
    spec = registry.get(pool.handler) if pool.handler else None
    if pool.handler:
        print(f"  handler: {pool.handler} (bound: raw bodies)")
        if spec is not None:
            policy = effective_policy(spec, policy)
    else:
        print(f"  handler: by JSON envelope task; known: {', '.join(sorted(registry.handlers))}")
    limit = f"TTR - {config.ttr_margin:g} s"
    timeout = (spec.timeout if spec else None) or pool.timeout
    shown = f"{timeout:g} s, capped at {limit}" if timeout else limit
    print(f"  handler timeout: {shown} (long-running handlers are touched instead)")
    source = " (the handler's own)" if spec and spec.max_attempts else ""
    print(
        f"  retries: max_attempts {policy.max_attempts}{source}, backoff "
        f"{policy.backoff_base:g} s doubling to {policy.backoff_cap:g} s with full jitter, "
        f"redelivery_limit {policy.redelivery_limit}"
    )


def show_apis(config: Config, registry: Registry) -> None:
    """Each external API: where its calls come from (hosts, or the handlers that declare it
    when no hosts are named), whose jobs wait while it is open, its breaker and its limit;
    then any handler whose calls cannot be told apart (several APIs without hosts)."""
    configured = {api.name: api for api in config.apis}
    declared: dict[str, list[str]] = {}  # API → the handlers that declare it
    attributed: dict[str, list[str]] = {}  # API → handlers whose host-less calls are its
    unclear: dict[str, list[str]] = {}  # handler → its several APIs without hosts
    for handler, registered in sorted(registry.handlers.items()):
        names = registered.spec.apis
        for name in names:
            declared.setdefault(name, []).append(handler)
        hostless = [n for n in names if not (n in configured and configured[n].hosts)]
        if len(hostless) == 1:
            attributed.setdefault(hostless[0], []).append(handler)
        elif hostless:
            unclear[handler] = hostless
    bound = {tube: api.name for api in config.apis for tube in api.tubes}
    if not configured and not declared:
        return
    print("apis:")
    for name in sorted(set(configured) | set(declared)):
        api = configured.get(name) or ApiConfig(name)
        print(f"  {name}:")
        print(f"    calls: {_calls_of(api, attributed.get(name, []))}")
        users = [*declared.get(name, []), *(f"tube {t}" for t, a in bound.items() if a == name)]
        print(f"    jobs held while it is open: {', '.join(users) or 'none'}")
        pauses = "; pauses its tubes on the servers" if api.pause_tubes and api.tubes else ""
        print(
            f"    breaker: opens after {api.consecutive_failures} failures in a row or "
            f"{api.failure_rate:.0%} of at least {api.min_calls} calls in {api.window:g} s; "
            f"cool-down {api.cooldown:g} s doubling to {api.cooldown_cap:g} s, "
            f"{plural(api.probes, 'probe')}{pauses}"
        )
        if api.limit is not None:
            print(f"    limit: {_limit_text(api.limit, config)}")
    for handler, hostless in unclear.items():
        print(
            f"warning: handler {handler!r} declares {', '.join(hostless)} with no hosts: its "
            "job.http calls to hosts no [api.NAME] names count under each host's own name "
            "and hold none of its jobs; name the hosts in [api.NAME] hosts for all but one"
        )


def _calls_of(api: ApiConfig, handlers: list[str]) -> str:
    if api.hosts:
        return f"job.http requests to {', '.join(api.hosts)}, whoever makes them"
    own = f'job.api("{api.name}")'
    if handlers:
        return (
            f"the job.http requests of {', '.join(handlers)} to hosts no [api.NAME] hosts "
            f"names, and {own}"
        )
    return f"{own} only (no hosts named, no handler's calls fall to it)"


def show_limits(config: Config, registry: Registry) -> None:
    for limit in config.limits:
        if limit.apis:
            continue  # shown with its API
        print(f"limit {limit.name}: {_limit_text(limit, config)}")


def _limit_text(limit: LimitConfig, config: Config) -> str:
    caps = []
    if limit.rate is not None:
        caps.append(f"{limit.rate:g}/s (burst {limit.bucket_size})")
    if limit.max_concurrent is not None:
        caps.append(f"{limit.max_concurrent} at once")
    scope = "in each process"
    if limit.fleet:
        servers = sorted(config.servers, key=str)
        shares = [
            f"{tube.tube.rsplit('.', 1)[1]}: "
            + ", ".join(
                f"{server} {share}"
                for server, share in zip(
                    servers, token_shares(tube.count, len(servers)), strict=True
                )
            )
            for tube in token_tubes(limit)
        ]
        scope = f"fleet-wide, tokens per server ({'; '.join(shares)})"
    keyed = f", per {limit.key}" if limit.key else ""
    return f"{' and '.join(caps)}{keyed}, {scope}; waits longer than {limit.defer_after:g} s defer"


def show_control(config: Config, registry: Registry) -> None:
    """The control plane: where it listens, whether actions can be authorised, and the
    host names its dashboard answers under."""
    control = config.control
    if control.listen is None:
        print("control: off (no [control] listen, --control or TUBEWORKER_CONTROL)")
        return
    print(f"control: {control.listen} (metrics, health, status, events, dashboard)")
    print(f"  token file: {_token_state(control.token_file)}")
    hosts = ", ".join(control.allowed_hosts) or "none"
    print(f"  allowed_hosts: {hosts} (besides IP addresses, localhost and the listen host)")
    if control.daemons:
        print(f"  daemons: {', '.join(control.daemons)}")


def _token_state(path: Path | None) -> str:
    actions = "POST /quiet, /resume and /drain"
    if path is None:
        return f"none: {actions} are always refused (401)"
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:  # it was readable a moment ago
        return f"{path} (not readable: {exc}): {actions} are always refused (401)"
    if not token:
        return f"{path} (readable, empty): {actions} are always refused (401)"
    return f"{path} (readable): {actions} need its token"


def show_schedules(config: Config, registry: Registry, *, now: float | None = None) -> None:
    """Each schedule: when it fires (the next five, in its zone and in UTC), what it puts
    where, and what happens after downtime; a warning when no pool here works its tube or
    no handler here is registered for its task (another daemon may)."""
    now = time.time() if now is None else now
    for schedule in config.schedules:
        when = (
            f"cron {schedule.cron!r} in {schedule.timezone}"
            if schedule.cron
            else (f"every {schedule.every:g} s")
        )
        what = f"task {schedule.task}" if schedule.task else "a raw body"
        print(f"schedule {schedule.name}: {when}, {what} into tube {schedule.tube}")
        misfire: str = schedule.misfire
        if misfire == "catch_up":
            misfire += (
                f" (the latest {schedule.catch_up_max} within {schedule.catch_up_window:g} s)"
            )
        print(f"  misfires (fires more than {GRACE:g} s late): {misfire}")
        fire = now
        for _ in range(5):
            fire = next_fire(schedule, fire)
            local = in_zone(fire, schedule.timezone).isoformat()
            print(f"  next: {local}  ({fire_id('', fire)[len('schedule::') :]} UTC)")
        if not any(matches_any(schedule.tube, pool.tubes) for pool in config.pools):
            print(
                f"warning: schedule {schedule.name!r}: tube {schedule.tube!r} is worked by "
                "no pool in this config (another daemon's, or a typo?)"
            )
        if schedule.task and registry.get(schedule.task) is None:
            print(
                f"warning: schedule {schedule.name!r}: task {schedule.task!r} has no handler "
                "registered here"
            )
        if schedule.overlap == "skip":
            print("  overlap: skip (no fire while the previous run is unfinished)")
    for heartbeat in config.heartbeats:
        ping = f", then GET {heartbeat.ping_url}" if heartbeat.ping_url else ""
        print(
            f"heartbeat {heartbeat.tube}: every {heartbeat.every:g} s{ping}; stale "
            f"(TubeworkerHeartbeatStale) after {3 * heartbeat.every:g} s without a run"
        )
        if not any(matches_any(heartbeat.tube, pool.tubes) for pool in config.pools):
            print(
                f"warning: heartbeat {heartbeat.tube!r}: no pool in this config works the "
                "tube (another daemon's, or a typo?)"
            )


def show_broken(config: Config, registry: Registry) -> None:
    """Entry points that failed to load (no pool binds them: that would be a problem)."""
    for broken in registry.broken.values():
        print(f"warning: handler {broken.name!r} failed to load: {broken.error}")


#: The report's sections, in order.
SECTIONS: Final[tuple[Section, ...]] = (
    show_worker,
    show_pools,
    show_apis,
    show_limits,
    show_control,
    show_schedules,
    show_broken,
)
