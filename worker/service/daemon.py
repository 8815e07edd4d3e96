"""The daemon: pools in one nursery, signals, drain, quiet mode, recycling, sd_notify.

Shutdown is a quiet phase then one deadline: on the first SIGTERM/SIGINT, fetching stops at
once (blocked reserves are abandoned by closing their connections), running jobs get
``drain_timeout`` seconds, then whatever still runs is cancelled and its connection closed,
so beanstalkd puts the job back to ready. A second signal skips the wait.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator, Sequence
from functools import partial

import structlog
import trio

from tubeworker.beanstalk.tls import TlsSettings, install_tls
from tubeworker.config import Config
from tubeworker.errors import ConfigError
from tubeworker.flow.apis import build_tracker, log_transitions, run_tube_pauser, tube_apis
from tubeworker.flow.limits import Limits
from tubeworker.flow.tokens import fleet_tokens
from tubeworker.flow.unique import UniqueLocks
from tubeworker.observe.logs import line_buffer
from tubeworker.registry import Registry
from tubeworker.runtime.batch_book import (
    run_batch_keeper,
)
from tubeworker.runtime.binlog import run_binlog_probe
from tubeworker.runtime.clock import run_clock
from tubeworker.runtime.lane import Lane
from tubeworker.runtime.records import (
    RecordQueue,
    ReturnsLookup,
    run_recorder,
    run_return_sweeper,
)
from tubeworker.runtime.serve import run_pool
from tubeworker.runtime.services import Services
from tubeworker.runtime.slots import InFlight
from tubeworker.runtime.state import WorkerState
from tubeworker.security.keys import KeyRing, KeysError, load_keys
from tubeworker.security.secrets import install_sealer
from tubeworker.security.signing import install_signer
from tubeworker.service.notify import Notifier
from tubeworker.service.stall import run_stall_detector
from tubeworker.service.status import DRAIN_MARGIN, run_drain_updates, run_status_updates

__all__ = ["SIGNALS", "run_daemon"]

log = structlog.get_logger("tubeworker")

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)
_READY_WAIT = 10.0  # READY=1 once every lane has tried its server once, or after this
_RECORDS_FLUSH = 3.0  # seconds the last records (a drain's returns) get to be written


def rss_bytes() -> int:
    """Resident set size now (not the peak), from /proc; 0 where unavailable."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


async def _handle_signals(signals: AsyncIterator[int], state: WorkerState) -> None:
    async for signum in signals:
        name = signal.Signals(signum).name
        if signum == signal.SIGUSR2:
            state.set_quiet(not state.quiet)
            log.info("quiet mode " + ("on: not fetching" if state.quiet else "off: fetching"))
        elif state.draining:
            log.warning("second signal: returning running jobs now", signal=name)
            state.return_running_jobs()
        else:
            log.info("draining", signal=name, jobs_running=state.running_jobs)
            state.begin_drain(name)


async def _drain_deadline(state: WorkerState, config: Config, notifier: Notifier) -> None:
    await state.drain_started.wait()
    # STOPPING=1, then the drain's progress with EXTEND_TIMEOUT_USEC until the deadline.
    await run_drain_updates(state, notifier, trio.current_time() + config.drain_timeout)
    notifier.status(
        f"draining ({state.drain_reason}): deadline passed, "
        f"returning {state.running_jobs} running jobs",
        extend=DRAIN_MARGIN,
    )
    if state.running_jobs:
        log.warning(
            "drain deadline passed: returning running jobs",
            drain_timeout=config.drain_timeout,
            jobs_running=state.running_jobs,
        )
    state.return_running_jobs()


async def _record(config: Config, records: RecordQueue, done: trio.Event) -> None:
    await run_recorder(config, records)
    done.set()


async def _recycle(state: WorkerState, config: Config) -> None:
    recycle = config.recycle
    started = time.monotonic()
    while not state.draining:
        if recycle.max_lifetime and time.monotonic() - started >= recycle.max_lifetime:
            state.begin_drain(f"recycling: max_lifetime {recycle.max_lifetime:g} s reached")
        elif recycle.max_memory_mb and rss_bytes() >= recycle.max_memory_mb * 2**20:
            state.begin_drain(f"recycling: RSS over max_memory_mb {recycle.max_memory_mb}")
        await trio.sleep(1.0)


async def _watchdog(notifier: Notifier, interval: float) -> None:
    # A task on the event loop, never a thread: a loop blocked by a handler sends no pings,
    # and systemd restarts the process once WatchdogSec passes without one.
    while True:  # also while draining: a drain is the process working, not hung
        notifier.watchdog()
        await trio.sleep(interval)


async def _announce_ready(
    lanes: Sequence[Lane], state: WorkerState, notifier: Notifier, config: Config
) -> None:
    with trio.move_on_after(_READY_WAIT):
        for lane in lanes:
            await lane.connected_once.wait()
    pools = ", ".join(f"{p.name} ({p.concurrency} jobs at once)" for p in config.pools)
    notifier.ready(f"running pools {pools}")
    log.info(
        "ready",
        pools={p.name: list(p.tubes) for p in config.pools},
        concurrency=config.total_concurrency,
        servers=[str(s) for s in config.servers],
        pid=os.getpid(),
    )
    if notifier.enabled:
        await run_status_updates(state, notifier)  # until the drain starts


async def run_daemon(
    config: Config,
    registry: Registry,
    *,
    signals: AsyncIterator[int] | None = None,
    state: WorkerState | None = None,
    notifier: Notifier | None = None,
    task_status: trio.TaskStatus[WorkerState] = trio.TASK_STATUS_IGNORED,
) -> WorkerState:
    """Run until drained. ``signals`` from ``trio.open_signal_receiver(*SIGNALS)``, opened by
    the caller before anything else; tests pass None and call ``state.begin_drain``."""
    buffer = line_buffer()
    if buffer is not None:
        instrument = buffer.flush_instrument()
        trio.lowlevel.add_instrument(instrument)
        buffer.bind_to_this_thread(True)
    try:
        return await _run_daemon(config, registry, signals, state, notifier, task_status)
    finally:
        if buffer is not None:
            trio.lowlevel.remove_instrument(instrument)
            buffer.bind_to_this_thread(False)


def use_tls(config: Config) -> None:
    """The daemon's [tls] for tls:// servers (else the TUBEWORKER_TLS_* environment); a
    verification turned off is said loudly, once."""
    settings = config.tls
    if settings is None:
        install_tls(None)
        return
    install_tls(
        TlsSettings(
            settings.ca_file,
            settings.cert_file,
            settings.key_file,
            settings.server_name,
            settings.verify,
        )
    )
    if not settings.verify:
        log.warning(
            "TLS certificate verification is OFF ([tls] verify = false): anyone on the path "
            "to beanstalkd can pretend to be it"
        )


def signing_keys(config: Config) -> KeyRing | None:
    """The [security] signing keys, read now (checked with the config already); this
    process signs the envelopes it writes with them (job.put, chains, the clock)."""
    path = config.security.signing_keys_file
    try:
        keys = None if path is None else load_keys(path)
    except KeysError as exc:  # changed since the config was checked
        raise ConfigError(str(exc), key="security.signing_keys_file") from None
    install_signer(keys)
    return keys


def encryption_keys(config: Config) -> KeyRing | None:
    """The [security] encryption keys: secrets are opened with them, and job.put's sealed."""
    path = config.security.encryption_keys_file
    try:
        keys = None if path is None else load_keys(path, exact_bytes=32)
    except KeysError as exc:  # changed since the config was checked
        raise ConfigError(str(exc), key="security.encryption_keys_file") from None
    install_sealer(keys)
    return keys


def unique_locks(config: Config, registry: Registry) -> UniqueLocks | None:
    """The unique-key locks, on the first of the servers (sorted, so that every daemon
    listing the same servers agrees), when a handler declares ``unique``."""
    if not any(h.spec.unique is not None for h in registry.handlers.values()):
        return None
    servers = {a for pool in config.pools for a in pool.servers or config.servers}
    return UniqueLocks(min(servers, key=str), connect_timeout=config.connect_timeout)


def _start_fleet_locks(helpers: trio.Nursery, services: Services) -> None:
    """What the fleet shares through reservations: limit tokens, unique-key locks."""
    if services.unique is not None:
        helpers.start_soon(services.unique.run)
    for groups in services.token_groups.values():
        for group in groups:
            for broker in group.brokers:
                helpers.start_soon(broker.run)


async def _run_daemon(
    config: Config,
    registry: Registry,
    signals: AsyncIterator[int] | None,
    state: WorkerState | None,
    notifier: Notifier | None,
    task_status: trio.TaskStatus[WorkerState],
) -> WorkerState:
    state = state or WorkerState(max_jobs=config.recycle.max_jobs)
    use_tls(config)
    notifier = notifier or Notifier.from_env()
    services = Services(
        config=config,
        registry=registry,
        state=state,
        in_flight=InFlight(config.max_in_flight or None),
        middleware=registry.middleware,
        tracker=build_tracker(config),
        tube_apis=tube_apis(config),
        records=RecordQueue(),
        returns=ReturnsLookup(config),
        limits=Limits(config.limits, clock=trio.current_time),
        token_groups=fleet_tokens(config),
        unique=unique_locks(config, registry),
        signing_keys=signing_keys(config),
        encryption_keys=encryption_keys(config),
    )
    state.tracker = services.tracker
    state.limits = services.limits
    state.token_groups = services.token_groups
    state.binlogs = services.binlogs
    log_transitions(services.tracker, state.events)
    servers = sorted({a for pool in config.pools for a in pool.servers or config.servers}, key=str)
    try:
        async with trio.open_nursery() as helpers:
            if signals is not None:
                helpers.start_soon(_handle_signals, signals, state)
            helpers.start_soon(_drain_deadline, state, config, notifier)
            helpers.start_soon(_recycle, state, config)
            helpers.start_soon(run_tube_pauser, config, services.tracker, servers)
            _start_fleet_locks(helpers, services)
            records = services.records
            assert records is not None
            recorded = trio.Event()
            helpers.start_soon(_record, config, records, recorded)
            helpers.start_soon(run_return_sweeper, config, tuple(servers))
            helpers.start_soon(partial(run_clock, config, state.clock, stop=state.drain_started))
            if config.spool is not None:
                helpers.start_soon(services.run_spool_flusher)
            for address in servers:
                helpers.start_soon(run_binlog_probe, config, address, services.binlog(address))
                keeper = partial(
                    run_batch_keeper,
                    address,
                    connect_timeout=config.connect_timeout,
                    reply_timeout=config.reply_timeout,
                )
                helpers.start_soon(keeper)
            if config.stall_threshold:
                handlers = [(n, r.spec.func) for n, r in registry.handlers.items()]
                await helpers.start(run_stall_detector, config.stall_threshold, handlers)
            if notifier.watchdog_interval:
                helpers.start_soon(_watchdog, notifier, notifier.watchdog_interval)
            async with trio.open_nursery() as pools:
                lanes: list[Lane] = []
                for pool_config in config.pools:
                    lanes += await pools.start(run_pool, pool_config, services)
                state.lanes = list(lanes)
                helpers.start_soon(_announce_ready, lanes, state, notifier, config)
                task_status.started(state)
            # every lane has returned: the drain is complete once its records are written
            records.close()
            with trio.move_on_after(_RECORDS_FLUSH):
                await recorded.wait()
            helpers.cancel_scope.cancel()
    finally:
        await services.aclose()
    log.info(
        "stopped",
        reason=state.drain_reason,
        **state.counters.totals(),
    )
    notifier.close()
    return state
