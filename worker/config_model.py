"""The configuration's model: every section as a frozen dataclass, with its defaults
(the one place they are written: the readers and config/reference.toml use them), and the
duration syntax shared by the config, the admin commands and the producer.

Reading a config into these is :mod:`tubeworker.config`'s (the public entry).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Final, Literal

from tubeworker.beanstalk.client import Address
from tubeworker.tubes import is_pattern

__all__ = [
    "DURATION",
    "LOG_LEVELS",
    "ApiConfig",
    "Config",
    "ControlConfig",
    "HeartbeatConfig",
    "LimitConfig",
    "LogFormat",
    "LoggingConfig",
    "MiddlewareConfig",
    "Overrides",
    "PoolConfig",
    "Profile",
    "RecycleConfig",
    "RetrySettings",
    "ScheduleConfig",
    "duration_seconds",
]

Profile = Literal["io", "compute"]
Misfire = Literal["skip", "coalesce", "catch_up"]
Overlap = Literal["allow", "skip"]
LogFormat = Literal["auto", "json", "console"]
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
# Durations everywhere (config, environment, flags, admin commands): 30, 30s, 5m, 1h, 250ms.
DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS: Final = {"ms": Fraction(1, 1000), "s": Fraction(1), "m": Fraction(60), "h": Fraction(3600)}


def duration_seconds(text: str) -> Fraction | None:
    """The exact seconds of a duration in the config's syntax (``30``, ``30s``, ``1.5m``,
    ``250ms``, ``1h``), or None when ``text`` is not one. The one definition of the syntax:
    the config, the admin commands and the producer all read durations with it."""
    match = DURATION.match(text)
    if not match:
        return None
    try:
        return Fraction(match.group(1)) * _UNITS.get(match.group(2), Fraction(1))
    except ValueError:  # more digits than Python converts
        return None


@dataclass(frozen=True, slots=True)
class RetrySettings:
    max_attempts: int = 10
    backoff_base: float = 2.0  # seconds before the first retry (full jitter below it)
    backoff_cap: float = 3600.0
    # Deliveries that ended with no outcome from us (worker crash, lost connection, drain
    # return). Past this the job is buried before it runs again: a poison pill.
    redelivery_limit: int = 3
    # A job whose payload version is newer than its handler here waits this long (as a
    # delayed copy, no attempt counted) for a newer worker to take it.
    newer_version_delay: int = 30


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """``[tls]``: how to reach ``tls://`` servers (a TLS terminator before beanstalkd)."""

    ca_file: Path | None = None
    cert_file: Path | None = None  # this client's, for mutual TLS (with key_file)
    key_file: Path | None = None
    server_name: str | None = None  # the name the server's certificate carries
    verify: bool = True


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """``[security]``: the signing keys file (its path: the daemon reads the secrets when
    it starts) and whether every job must be signed (pools may say otherwise)."""

    signing_keys_file: Path | None = None
    require_signature: bool = False
    encryption_keys_file: Path | None = None  # job secrets (AES-256-GCM, 32-byte keys)


@dataclass(frozen=True, slots=True)
class PoolConfig:
    name: str
    tubes: tuple[str, ...]  # names or glob patterns (tenant-*)
    concurrency: int = 10  # the io profile's; compute: the cores but one
    profile: Profile = "io"
    handler: str | None = None  # bound: every job goes to it as raw bytes
    timeout: float | None = None  # handler timeout; None: the job's TTR minus the margin
    servers: tuple[Address, ...] = ()  # empty: the worker's servers
    retry: RetrySettings = field(default_factory=RetrySettings)
    # Jobs reserved on one connection at once: fewer connections, batched round trips.
    jobs_per_connection: int = 50
    # Every job must be signed ([security]); None: as [security] require_signature says.
    require_signature: bool | None = None

    @property
    def has_globs(self) -> bool:
        return any(is_pattern(t) for t in self.tubes)


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    format: LogFormat = "auto"  # auto: console on a TTY, JSON otherwise
    level: str = "info"
    job_lines: bool = True  # one line per finished job


@dataclass(frozen=True, slots=True)
class RecycleConfig:
    max_jobs: int = 0  # 0: never
    max_memory_mb: int = 0
    max_lifetime: float = 0.0


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """An external API (``[api.NAME]``): the hosts that belong to it, the tubes whose jobs
    all need it, whether an outage pauses those tubes server-wide, and its breaker."""

    name: str
    hosts: tuple[str, ...] = ()
    tubes: tuple[str, ...] = ()  # every job of these tubes needs this API
    pause_tubes: bool = False  # pause-tube them on the server while the API is open
    window: float = 60.0
    failure_rate: float = 0.5
    min_calls: int = 20
    consecutive_failures: int = 5
    cooldown: float = 30.0
    cooldown_cap: float = 600.0
    probes: int = 1
    limit: LimitConfig | None = None  # its rate, burst, max_concurrent (named after it)


@dataclass(frozen=True, slots=True)
class LimitConfig:
    """One limit: which jobs it applies to, and the caps.

    ``tubes``, ``handlers`` and ``apis`` select jobs (empty: any); ``key`` is a payload
    field (dots for nesting) whose each value is limited separately; ``rate`` is jobs per
    second with ``burst`` allowed at once (None: no rate cap); ``max_concurrent`` jobs at
    once (None: no cap). ``defer_after``: a job that would wait longer is deferred (a
    delayed copy; no attempt counted) instead of holding its slot.
    """

    name: str
    tubes: tuple[str, ...] = ()
    handlers: tuple[str, ...] = ()
    apis: tuple[str, ...] = ()
    key: str | None = None
    rate: float | None = None
    burst: int | None = None
    max_concurrent: int | None = None
    fleet: bool = False
    defer_after: float = 10.0

    def __post_init__(self) -> None:
        if self.rate is None and self.max_concurrent is None:
            raise ValueError(f"limit {self.name!r} has neither a rate nor max_concurrent")
        if self.rate is not None and not (self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError(f"limit {self.name!r}: rate must be a positive number")
        if self.burst is not None and self.burst < 1:
            raise ValueError(f"limit {self.name!r}: burst must be at least 1")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ValueError(f"limit {self.name!r}: max_concurrent must be at least 1")
        if self.fleet and self.key is not None:
            raise ValueError(f"limit {self.name!r}: a fleet-wide limit cannot have a key")

    @property
    def bucket_size(self) -> int:
        """How many jobs may start at once after a quiet spell (the bucket's capacity)."""
        if self.burst is not None:
            return self.burst
        return max(1, math.ceil(self.rate or 1))

    def applies(self, tube: str, handler: str | None, apis: frozenset[str]) -> bool:
        return (
            (not self.tubes or tube in self.tubes)
            and (not self.handlers or (handler is not None and handler in self.handlers))
            and (not self.apis or not apis.isdisjoint(self.apis))
        )


@dataclass(frozen=True, slots=True)
class MiddlewareConfig:
    """Middleware enabled by name (entry-point group ``tubeworker.middleware``), outermost
    first, each with the options of its ``[middleware.NAME]`` table (given to its factory
    as keywords)."""

    enabled: tuple[str, ...] = ()
    options: Mapping[str, Mapping[str, object]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ControlConfig:
    """The control plane: HTTP metrics, health, status and actions, WebSocket events."""

    listen: Address | None = None  # None: no control plane
    token_file: Path | None = None  # state-changing calls need this bearer token
    metrics_interval: float = 5.0  # how often tube depths are read with stats-tube
    events_per_second: int = 100  # job events per second to live viewers; more are summed
    daemons: tuple[str, ...] = ()  # other daemons' control planes, for the dashboard
    # Host names the dashboard answers under besides IP addresses and localhost (a browser
    # on another name could be a DNS-rebinding page).
    allowed_hosts: tuple[str, ...] = ()
    # The beanstalkd servers' connection limit (their fd limit, `ulimit -n`, less a few):
    # TubeworkerServerConnectionsNearLimit fires near it. 0: not known, no alert.
    server_max_connections: int = 0
    # Viewers: with this file, every read but /healthz and /readyz needs a token (this one,
    # or the operator's); /metrics only with metrics_token_file (its own token).
    read_token_file: Path | None = None
    metrics_token_file: Path | None = None
    show_bodies_to: Literal["operator", "viewer"] = "operator"  # who sees job bodies
    redact: tuple[str, ...] = ()  # payload paths masked in every body shown


@dataclass(frozen=True, slots=True)
class ScheduleConfig:
    """A ``[[schedule]]``: a job put into ``tube`` at each fire time, once across the fleet.

    Exactly one of ``cron`` (five fields, read in ``timezone``) and ``every`` (seconds; fires
    at the multiples of it since the Unix epoch, so every daemon agrees). The job is the
    envelope of ``task`` and ``payload`` (with the id ``schedule:NAME:FIRE_TIME``), or the
    raw ``body``. ``misfire``: what runs for fires missed by more than a second (downtime):
    none (skip), one for them all (coalesce), each within ``catch_up_window``, the latest
    ``catch_up_max`` of them (catch_up). ``jitter``: a random delay in [0, jitter] seconds.
    """

    name: str
    tube: str
    cron: str | None = None
    every: float | None = None
    timezone: str = "UTC"
    task: str | None = None
    payload: object = None
    body: str | None = None
    priority: int = 1024
    ttr: int = 60
    delay: int = 0
    misfire: Misfire = "coalesce"
    catch_up_window: float = 21600.0  # 6h
    catch_up_max: int = 100
    jitter: float = 0.0
    overlap: Overlap = "allow"


@dataclass(frozen=True, slots=True)
class HeartbeatConfig:
    """A ``[[heartbeat]]``: a tiny built-in job put into ``tube`` every ``every`` seconds
    (by the clock, once across the fleet), run by whichever pool serves the tube; each run
    is recorded in beanstalkd, so any daemon can tell how long ago the tube last moved.
    ``ping_url``: a GET after each run (a dead-man's switch such as Healthchecks)."""

    tube: str
    every: float = 60.0
    ping_url: str | None = None
    priority: int = 1024
    ttr: int = 60


@dataclass(frozen=True, slots=True)
class Config:
    pools: tuple[PoolConfig, ...]
    servers: tuple[Address, ...] = (Address(),)
    drain_timeout: float = 25.0
    connect_timeout: float = 5.0
    reserve_timeout: int = 5  # a lane blocked this long looks around (quiet, new tubes)
    ttr_margin: float = 1.0  # our deadline is this far before beanstalkd's TTR
    max_in_flight: int = 0  # 0: the sum of the pools' concurrency
    tube_poll_interval: float = 5.0  # how often glob patterns look for new tubes
    stall_threshold: float = 1.0  # warn when the event loop is blocked this long; 0: off
    # A reply owed that makes no progress (no byte) this long: the connection is dead or
    # the server hung; it is given up (a blocked reserve gets reserve_timeout more).
    reply_timeout: float = 10.0
    keepalive: float = 10.0  # TCP keepalive on beanstalkd connections (seconds; 0: off)
    # Reserve no more jobs in one batch than fit this many bytes (by the bodies seen so far):
    # on a slow link, large bodies make smaller batches.
    batch_bytes: int = 256 * 1024
    # job.put's spool: a follow-up job no server stores waits in this SQLite file until one
    # does (tubeworker.producer's spool); None: job.put raises NoServerAvailable.
    spool: Path | None = None
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    recycle: RecycleConfig = field(default_factory=RecycleConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    middleware: MiddlewareConfig = field(default_factory=MiddlewareConfig)
    apis: tuple[ApiConfig, ...] = ()
    # [[limit]] tables and the rate/burst/max_concurrent of [api.NAME] tables.
    limits: tuple[LimitConfig, ...] = ()
    # Handlers not (yet) packaged with an entry point: task name → "module:function".
    handlers: tuple[tuple[str, str], ...] = ()
    # [settings.NAME]: options of the handler registered as NAME (its job.settings).
    handler_settings: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    schedules: tuple[ScheduleConfig, ...] = ()  # [[schedule]] tables
    security: SecurityConfig = field(default_factory=SecurityConfig)
    tls: TlsConfig | None = None  # [tls]; None: the TUBEWORKER_TLS_* environment
    heartbeats: tuple[HeartbeatConfig, ...] = ()  # [[heartbeat]] tables
    source: str = "defaults"
    # The config file's folder: [handlers] modules beside the config are found there.
    config_dir: Path | None = None

    @property
    def total_concurrency(self) -> int:
        return sum(p.concurrency for p in self.pools)


@dataclass(frozen=True, slots=True)
class Overrides:
    """Command-line flags (None: not given)."""

    servers: tuple[str, ...] = ()
    tubes: tuple[str, ...] = ()
    concurrency: int | None = None
    handler: str | None = None
    profile: str | None = None
    drain_timeout: str | None = None
    max_attempts: int | None = None
    log_format: str | None = None
    log_level: str | None = None
    control: str | None = None
    control_token_file: str | None = None
