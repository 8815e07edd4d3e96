"""``tubeworker check``: validate a config and show what would run, with the values that
apply (a handler's own options over its pool's).

Every problem is found in one pass and printed one a line (file, key, problem), exit 78.
A valid config is shown section by section: each section is one function of
``(config, registry)`` in :data:`SECTIONS`, printed in that order; a new section is a new
function added there.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Final

from tubeworker.cli.admin import plural
from tubeworker.cli.startup import EX_CONFIG, EX_OK, load_all, print_problems
from tubeworker.config import Config, PoolConfig
from tubeworker.registry import Registry
from tubeworker.runtime.dispatch import effective_policy
from tubeworker.runtime.policy import RetryPolicy
from tubeworker.runtime.pool import lane_sizes

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
    r = pool.retry
    policy = RetryPolicy(r.max_attempts, r.backoff_base, r.backoff_cap, r.redelivery_limit)
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


def show_broken(config: Config, registry: Registry) -> None:
    """Entry points that failed to load (no pool binds them: that would be a problem)."""
    for broken in registry.broken.values():
        print(f"warning: handler {broken.name!r} failed to load: {broken.error}")


#: The report's sections, in order.
SECTIONS: Final[tuple[Section, ...]] = (show_worker, show_pools, show_control, show_broken)
