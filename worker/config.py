"""Configuration: TOML file, ``TUBEWORKER_*`` environment, command-line flags, defaults.

Precedence: flags > environment > file > defaults. Everything is validated before anything
connects; each problem is a :class:`ConfigError` naming where it came from (the file, the
variable or the flag), the key, and what is wrong. :func:`validate_config` finds every
problem in one pass; :func:`load_config` raises the first. The CLI prints them, one a
line, and exits 78.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal, TypeVar

from tubeworker.beanstalk.client import Address, parse_address
from tubeworker.beanstalk.protocol import MAX_INT, validate_tube_name
from tubeworker.errors import ConfigError, LocalProtocolError
from tubeworker.tubes import as_name, is_pattern

__all__ = [
    "ApiConfig",
    "Config",
    "ConfigReport",
    "ControlConfig",
    "LoggingConfig",
    "MiddlewareConfig",
    "Overrides",
    "PoolConfig",
    "RecycleConfig",
    "RetrySettings",
    "load_config",
    "validate_config",
]

Profile = Literal["io", "compute"]
LogFormat = Literal["auto", "json", "console"]
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
# Durations everywhere (config, environment, flags, admin commands): 30, 30s, 5m, 1h, 250ms.
DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_ASCII_DIGITS: Final = re.compile(r"[0-9]+\Z")  # str.isdigit() also accepts "²"
_T = TypeVar("_T")
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
    source: str = "defaults"
    # The config file's folder: [handlers] modules beside the config are found there.
    config_dir: Path | None = None

    @property
    def total_concurrency(self) -> int:
        return sum(p.concurrency for p in self.pools)


# Every default is a field default of the classes above, read from these when a key is
# absent: one place (config/reference.toml lists the same values; a test keeps them equal).
_D_CONFIG: Final = Config(pools=())
_D_POOL: Final = PoolConfig("", ())
_D_LOGGING: Final = LoggingConfig()
_D_RECYCLE: Final = RecycleConfig()
_D_CONTROL: Final = ControlConfig()
_D_API: Final = ApiConfig("")
_D_LIMIT: Final = LimitConfig("", rate=1.0)  # (a limit needs a cap; its other defaults)


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


# --------------------------------------------------------------------------- reading


class _Problems:
    """Every problem found in one pass, at most one per key: a bad value is read as its
    default so that the rest can be checked, and must not lead to a second, made-up
    complaint about the same key."""

    def __init__(self) -> None:
        self.errors: list[ConfigError] = []
        self._keys: set[tuple[str | None, str | None]] = set()

    def add(self, error: ConfigError) -> None:
        where = (error.source, error.key)
        if where not in self._keys:
            self._keys.add(where)
            self.errors.append(error)


class _Reader:
    """Reads one TOML table, remembering where each key came from for error messages.

    A getter that finds a bad value records the problem and returns the default, so that
    one pass finds every problem.
    """

    def __init__(
        self, table: Mapping[str, Any], path: str, origins: Mapping[str, str], problems: _Problems
    ):
        self.table = table
        self.path = path  # dotted, e.g. "pool[0].retry"
        self.origins = origins
        self.problems = problems
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def fail(self, name: str, problem: str) -> ConfigError:
        key = self.key(name)
        return ConfigError(problem, key=key, source=self.origins.get(key, self.origins[""]))

    def report(self, name: str, problem: str) -> None:
        self.problems.add(self.fail(name, problem))

    def bad(self, name: str, problem: str, default: _T) -> _T:
        """Record the problem; the default stands in for the value meanwhile."""
        self.report(name, problem)
        return default

    def reader(self, table: Mapping[str, Any], path: str) -> _Reader:
        """A reader of another table, reporting to the same place."""
        return _Reader(table, path, self.origins, self.problems)

    def get(self, name: str) -> Any:
        self.used.add(name)
        return self.table.get(name)

    def check_unknown(self, known: tuple[str, ...]) -> None:
        for name in self.table:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.report(name, f"unknown key{hint}; known keys: {', '.join(known)}")

    def integer(self, name: str, default: int, *, low: int = 0, high: int = MAX_INT) -> int:
        value = self.get(name)
        if value is None:
            return default
        if isinstance(value, str) and _ASCII_DIGITS.match(value.strip()):
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            return self.bad(name, f"must be a whole number, got {value!r}", default)
        if not low <= value <= high:
            return self.bad(name, f"must be between {low} and {high}, got {value}", default)
        return value

    def fraction(self, name: str, default: float) -> float:
        value = self.get(name)
        if value is None:
            return default
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value <= 1:
            return self.bad(name, f"must be a fraction in (0, 1], got {value!r}", default)
        return float(value)

    def seconds(self, name: str, default: float, *, low: float = 0, high: float = MAX_INT) -> float:
        value = self.get(name)
        if value is None:
            return default
        if isinstance(value, str):
            match = DURATION.match(value)
            if not match:
                problem = f"must be seconds or a duration like '30s', '5m', got {value!r}"
                return self.bad(name, problem, default)
            value = float(Fraction(match.group(1)) * _UNITS.get(match.group(2), Fraction(1)))
        if not isinstance(value, int | float) or isinstance(value, bool):
            return self.bad(name, f"must be a number of seconds, got {value!r}", default)
        if not low <= value <= high:
            problem = f"must be between {low} and {high} seconds, got {value}"
            return self.bad(name, problem, default)
        return float(value)

    def boolean(self, name: str, default: bool) -> bool:
        value = self.get(name)
        if value is None:
            return default
        if isinstance(value, str) and value.lower() in (
            "1",
            "true",
            "yes",
            "on",
            "0",
            "false",
            "no",
            "off",
        ):
            return value.lower() in ("1", "true", "yes", "on")
        if not isinstance(value, bool):
            return self.bad(name, f"must be true or false, got {value!r}", default)
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.get(name)
        if value is None:
            return default
        if not isinstance(value, str) or value.lower() not in choices:
            return self.bad(name, f"must be one of {', '.join(choices)}, got {value!r}", default)
        return value.lower()

    def text(self, name: str) -> str | None:
        value = self.get(name)
        if value is not None and (not isinstance(value, str) or not value):
            return self.bad(name, f"must be a non-empty string, got {value!r}", None)
        return value

    def strings(self, name: str) -> tuple[str, ...] | None:
        value = self.get(name)
        if value is None:
            return None
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return self.bad(name, f"must be a list of strings, got {value!r}", None)
        return tuple(value)

    def table_at(self, name: str) -> _Reader:
        value = self.get(name)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            self.report(name, f"must be a table, got {value!r}")
            value = {}
        return self.reader(value, self.key(name))

    def servers(self, name: str) -> tuple[Address, ...] | None:
        texts = self.strings(name)
        if texts is None:
            return None
        if not texts:
            return self.bad(name, "needs at least one server", None)
        try:
            return tuple(parse_address(t) for t in texts)
        except ValueError as exc:
            return self.bad(name, str(exc), None)


def _tube_patterns(reader: _Reader, name: str) -> tuple[str, ...]:
    tubes = reader.strings(name)
    if not tubes:
        return reader.bad(name, "needs at least one tube name or pattern", ())
    for tube in tubes:
        # A pattern must be a legal name once its glob characters are taken out.
        literal = as_name(tube)
        try:
            validate_tube_name(literal, "tube")
        except LocalProtocolError as exc:
            problem = f"{tube!r} is not a valid tube name or pattern: {exc}"
            return reader.bad(name, problem, ())
    return tubes


_RETRY_KEYS: Final = ("max_attempts", "backoff_base", "backoff_cap", "redelivery_limit")
_POOL_KEYS: Final = (
    "jobs_per_connection",
    "name",
    "tubes",
    "concurrency",
    "profile",
    "handler",
    "timeout",
    "servers",
    "retry",
)


def _retry(reader: _Reader, base: RetrySettings) -> RetrySettings:
    reader.check_unknown(_RETRY_KEYS)
    settings = RetrySettings(
        max_attempts=reader.integer("max_attempts", base.max_attempts, low=1, high=100_000),
        backoff_base=reader.seconds("backoff_base", base.backoff_base, high=86_400),
        backoff_cap=reader.seconds("backoff_cap", base.backoff_cap, low=1, high=MAX_INT),
        redelivery_limit=reader.integer(
            "redelivery_limit", base.redelivery_limit, low=1, high=1000
        ),
    )
    if settings.backoff_cap < settings.backoff_base:
        # Pools inherit these: the base stands in for the cap, or each would repeat it.
        settings = reader.bad(
            "backoff_cap",
            "must be >= backoff_base",
            replace(settings, backoff_cap=settings.backoff_base),
        )
    return settings


def _pool(reader: _Reader, index: int, retry: RetrySettings) -> PoolConfig:
    reader.check_unknown(_POOL_KEYS)
    name = reader.text("name") or f"pool{index}"
    tubes = _tube_patterns(reader, "tubes")
    profile = reader.choice("profile", _D_POOL.profile, ("io", "compute"))
    compute = profile == "compute"
    default_concurrency = max(1, (os.cpu_count() or 2) - 1) if compute else _D_POOL.concurrency
    return PoolConfig(
        name=name,
        tubes=tubes,
        concurrency=reader.integer("concurrency", default_concurrency, low=1, high=100_000),
        profile="compute" if profile == "compute" else "io",
        handler=reader.text("handler"),
        timeout=reader.seconds("timeout", 0.0, high=MAX_INT) or None,
        servers=reader.servers("servers") or (),
        jobs_per_connection=reader.integer(
            "jobs_per_connection", _D_POOL.jobs_per_connection, low=1, high=1000
        ),
        retry=_retry(reader.table_at("retry"), retry),
    )


def _logging(reader: _Reader) -> LoggingConfig:
    reader.check_unknown(("format", "level", "job_lines"))
    fmt = reader.choice("format", "auto", ("auto", "json", "console"))
    return LoggingConfig(
        format="json" if fmt == "json" else "console" if fmt == "console" else "auto",
        level=reader.choice("level", _D_LOGGING.level, LOG_LEVELS),
        job_lines=reader.boolean("job_lines", _D_LOGGING.job_lines),
    )


def _recycle(reader: _Reader) -> RecycleConfig:
    reader.check_unknown(("max_jobs", "max_memory_mb", "max_lifetime"))
    return RecycleConfig(
        max_jobs=reader.integer("max_jobs", _D_RECYCLE.max_jobs, high=2**62),
        max_memory_mb=reader.integer("max_memory_mb", _D_RECYCLE.max_memory_mb, high=2**40),
        max_lifetime=reader.seconds("max_lifetime", _D_RECYCLE.max_lifetime),
    )


def _control(reader: _Reader) -> ControlConfig:
    reader.check_unknown(
        (
            "listen",
            "token_file",
            "metrics_interval",
            "events_per_second",
            "daemons",
            "allowed_hosts",
        )
    )
    listen = _listen(reader)
    token_file = _token_file(reader)
    metrics_interval = reader.seconds(
        "metrics_interval", _D_CONTROL.metrics_interval, low=0.1, high=3600
    )
    events_per_second = reader.integer(
        "events_per_second", _D_CONTROL.events_per_second, low=1, high=100_000
    )
    daemons = reader.strings("daemons") or ()
    for url in daemons:
        if not re.fullmatch(r"(https?://)?(\[[0-9a-fA-F:.]+\]|[^\s/:\[\]]+):[0-9]{1,5}/?", url):
            problem = f"each must be HOST:PORT or http://HOST:PORT: {url!r}"
            daemons = reader.bad("daemons", problem, ())
            break
    return ControlConfig(
        listen=listen,
        token_file=token_file,
        metrics_interval=metrics_interval,
        events_per_second=events_per_second,
        daemons=daemons,
        allowed_hosts=tuple(h.lower() for h in reader.strings("allowed_hosts") or ()),
    )


def _listen(reader: _Reader) -> Address | None:
    listen = reader.text("listen")
    if not listen:
        return None
    try:
        address = parse_address(listen)
    except ValueError as exc:
        return reader.bad("listen", f"must be HOST:PORT: {exc}", None)
    if address.unix_path is not None or ":" not in listen:
        return reader.bad("listen", f"must be HOST:PORT, got {listen!r}", None)
    return address


def _token_file(reader: _Reader) -> Path | None:
    """The token file's path, once it is known to be readable UTF-8 text: the control plane
    reads it when it starts."""
    name = reader.text("token_file")
    if not name:
        return None
    path = Path(name)
    try:
        path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return reader.bad("token_file", f"no such file: {path}", None)
    except OSError as exc:
        return reader.bad("token_file", f"cannot read {path}: {exc.strerror}", None)
    except UnicodeDecodeError:
        return reader.bad("token_file", f"{path} is not UTF-8 text", None)
    return path


# The limit of an [api.NAME] table (a [[limit]] applying to the API's jobs).
_API_LIMIT_KEYS: Final = ("rate", "burst", "max_concurrent", "fleet", "defer_after")
_LIMIT_KEYS: Final = (
    "name",
    "tubes",
    "handlers",
    "apis",
    "key",
    "rate",
    "burst",
    "max_concurrent",
    "fleet",
    "defer_after",
)
_LIMIT_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_API_KEYS: Final = (
    "hosts",
    "tubes",
    "pause_tubes",
    "window",
    "failure_rate",
    "min_calls",
    "consecutive_failures",
    "cooldown",
    "cooldown_cap",
    "probes",
    *_API_LIMIT_KEYS,
)


def _apis(reader: _Reader) -> tuple[ApiConfig, ...]:
    apis: list[ApiConfig] = []
    for name in reader.table:
        api = reader.table_at(name)
        reader.used.add(name)
        api.check_unknown(_API_KEYS)
        cooldown = api.seconds("cooldown", _D_API.cooldown, low=0.1, high=86_400)
        config = ApiConfig(
            name=name,
            hosts=api.strings("hosts") or (),
            tubes=_api_tubes(api),
            pause_tubes=api.boolean("pause_tubes", _D_API.pause_tubes),
            window=api.seconds("window", _D_API.window, low=1, high=86_400),
            failure_rate=api.fraction("failure_rate", _D_API.failure_rate),
            min_calls=api.integer("min_calls", _D_API.min_calls, low=1, high=1_000_000),
            consecutive_failures=api.integer(
                "consecutive_failures", _D_API.consecutive_failures, high=1_000_000
            ),
            cooldown=cooldown,
            cooldown_cap=api.seconds(
                "cooldown_cap", max(_D_API.cooldown_cap, cooldown), low=cooldown
            ),
            probes=api.integer("probes", _D_API.probes, low=1, high=1000),
            limit=_limit(api, name, apis=(name,)),
        )
        apis.append(config)
    return tuple(apis)


def _api_tubes(api: _Reader) -> tuple[str, ...]:
    tubes = api.strings("tubes") or ()
    for tube in tubes:
        try:
            validate_tube_name(tube)
        except LocalProtocolError as exc:
            return api.bad("tubes", str(exc), ())
    return tubes


def _limit(reader: _Reader, name: str, *, apis: tuple[str, ...] = ()) -> LimitConfig | None:
    """One limit's caps from ``reader`` (a [[limit]] table or an [api.NAME] table); None
    when it sets none. A bad value is reported and a valid one stands in for it, so the
    rest of the limit is still checked."""
    rate = reader.get("rate")
    if rate is not None and (
        not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 < rate <= 1e6
    ):
        rate = reader.bad("rate", f"must be jobs per second, above 0, got {rate!r}", 1.0)
    burst = reader.get("burst")
    if burst is not None:
        burst = reader.integer("burst", 1, low=1, high=1_000_000)
        if rate is None:
            burst = reader.bad("burst", "needs a rate", None)
    concurrent = reader.get("max_concurrent")
    if concurrent is not None:
        concurrent = reader.integer("max_concurrent", 1, low=1, high=1_000_000)
    fleet = reader.boolean("fleet", _D_LIMIT.fleet)
    defer_after = reader.seconds("defer_after", _D_LIMIT.defer_after, low=0, high=86_400)
    if rate is None and concurrent is None:
        for option in ("fleet", "defer_after"):
            if reader.table.get(option) is not None:
                reader.report(option, "applies to a limit: set rate or max_concurrent too")
        return None
    if not _LIMIT_NAME.match(name):
        reader.report("name", f"must be letters, digits, '_', '.' or '-', got {name!r}")
    key = reader.text("key") if "key" in reader.table else None
    if key is not None and fleet:
        key = reader.bad("key", "a fleet-wide limit cannot have a key (one per value)", None)
    return LimitConfig(
        name=name,
        tubes=reader.strings("tubes") or () if not apis else (),
        handlers=reader.strings("handlers") or () if not apis else (),
        apis=apis or reader.strings("apis") or (),
        key=key,
        rate=None if rate is None else float(rate),
        burst=burst,
        max_concurrent=concurrent,
        fleet=fleet,
        defer_after=defer_after,
    )


def _limits(top: _Reader, apis: tuple[ApiConfig, ...]) -> tuple[LimitConfig, ...]:
    limits = [api.limit for api in apis if api.limit is not None]
    raw = top.get("limit") or []
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raw = top.bad("limit", "must be an array of tables ([[limit]])", [])
    for i, table in enumerate(raw):
        reader = top.reader(table, f"limit[{i}]")
        reader.check_unknown(_LIMIT_KEYS)
        name = reader.text("name") or f"limit{i}"
        limit = _limit(reader, name)
        if limit is None:
            reader.report("rate", "a [[limit]] needs a rate, a max_concurrent or both")
            continue
        limits.append(limit)
    names = [limit.name for limit in limits]
    for name in dict.fromkeys(names):
        if names.count(name) > 1:
            top.report("limit", f"two limits are named {name!r} ([api.{name}] is one)")
    return tuple(limits)


def _middleware(reader: _Reader) -> MiddlewareConfig:
    enabled = reader.strings("enabled") or ()
    options: dict[str, Mapping[str, object]] = {}
    for name, value in reader.table.items():
        if name == "enabled":
            continue
        reader.used.add(name)
        if name not in enabled:
            reader.report(name, f"options for middleware {name!r}, which is not enabled")
        elif not isinstance(value, dict):
            reader.report(name, "must be a table of options ([middleware.NAME])")
        else:
            options[name] = MappingProxyType(dict(value))
    return MiddlewareConfig(enabled=tuple(enabled), options=MappingProxyType(options))


_WORKER_KEYS: Final = (
    "servers",
    "drain_timeout",
    "connect_timeout",
    "reserve_timeout",
    "ttr_margin",
    "max_in_flight",
    "tube_poll_interval",
    "stall_threshold",
    "reply_timeout",
    "keepalive",
    "batch_bytes",
)
_TOP_KEYS: Final = (
    "worker",
    "retry",
    "logging",
    "recycle",
    "pool",
    "handlers",
    "control",
    "middleware",
    "api",
    "limit",
    "settings",
)
_TARGET: Final = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def _handlers(reader: _Reader) -> tuple[tuple[str, str], ...]:
    targets: list[tuple[str, str]] = []
    for name, target in reader.table.items():
        if not isinstance(target, str) or not _TARGET.match(target):
            reader.report(name, f"must be 'module:function', got {target!r}")
        else:
            targets.append((name, target))
    return tuple(sorted(targets))


def _handler_settings(reader: _Reader) -> Mapping[str, Mapping[str, object]]:
    settings: dict[str, Mapping[str, object]] = {}
    for name, value in reader.table.items():
        reader.used.add(name)
        if not isinstance(value, dict):
            reader.report(name, 'must be a table of options ([settings."HANDLER"])')
        else:
            settings[name] = MappingProxyType(dict(value))
    return MappingProxyType(settings)


def _worker(reader: _Reader, source: str) -> Config:
    """A config holding the [worker] values (its pools and sections come after)."""
    reader.check_unknown(_WORKER_KEYS)
    return Config(
        pools=(),
        servers=reader.servers("servers") or (Address(),),
        drain_timeout=reader.seconds("drain_timeout", _D_CONFIG.drain_timeout, high=86_400),
        connect_timeout=reader.seconds(
            "connect_timeout", _D_CONFIG.connect_timeout, low=0.1, high=600
        ),
        reserve_timeout=reader.integer(
            "reserve_timeout", _D_CONFIG.reserve_timeout, low=1, high=3600
        ),
        ttr_margin=reader.seconds("ttr_margin", _D_CONFIG.ttr_margin, low=0.1, high=3600),
        max_in_flight=reader.integer("max_in_flight", _D_CONFIG.max_in_flight, high=1_000_000),
        tube_poll_interval=reader.seconds(
            "tube_poll_interval", _D_CONFIG.tube_poll_interval, low=0.1, high=3600
        ),
        stall_threshold=reader.seconds("stall_threshold", _D_CONFIG.stall_threshold, high=3600),
        reply_timeout=reader.seconds("reply_timeout", _D_CONFIG.reply_timeout, low=0.5, high=3600),
        keepalive=reader.seconds("keepalive", _D_CONFIG.keepalive, high=3600),
        batch_bytes=reader.integer("batch_bytes", _D_CONFIG.batch_bytes, low=1024, high=2**31),
        source=source,
    )


def _pools(top: _Reader, retry: RetrySettings) -> tuple[PoolConfig, ...]:
    raw = top.get("pool") or []
    if not isinstance(raw, list) or not all(isinstance(p, dict) for p in raw):
        return top.bad("pool", "must be an array of tables ([[pool]])", ())
    if not raw:
        return top.bad("pool", "no pools: add a [[pool]] table with tubes, or pass --tube", ())
    pools = tuple(_pool(top.reader(p, f"pool[{i}]"), i, retry) for i, p in enumerate(raw))
    names = [p.name for p in pools]
    for name in dict.fromkeys(names):
        if names.count(name) > 1:
            top.report("pool", f"two pools are named {name!r}")
    return pools


def _build(raw: dict[str, Any], origins: dict[str, str], problems: _Problems) -> Config:
    """The config, reading the sections in the order of config/reference.toml (so problems
    are listed in that order); each problem goes to ``problems``, a default standing in."""
    top = _Reader(raw, "", origins, problems)
    top.check_unknown(_TOP_KEYS)
    config = _worker(top.table_at("worker"), origins[""])
    retry = _retry(top.table_at("retry"), RetrySettings())
    logging = _logging(top.table_at("logging"))
    recycle = _recycle(top.table_at("recycle"))
    handlers = _handlers(top.table_at("handlers"))
    pools = _pools(top, retry)
    control = _control(top.table_at("control"))
    middleware = _middleware(top.table_at("middleware"))
    apis = _apis(top.table_at("api"))
    return replace(
        config,
        pools=pools,
        logging=logging,
        recycle=recycle,
        handlers=handlers,
        control=control,
        middleware=middleware,
        apis=apis,
        limits=_limits(top, apis),
        handler_settings=_handler_settings(top.table_at("settings")),
    )


# --------------------------------------------------------------------------- layering

# (environment variable, flag, setter): each writes into the raw tree and records its origin.
_Setter = Callable[[dict[str, Any], dict[str, str], Any, str], None]


def _set_in(table: str, key: str) -> _Setter:
    def setter(raw: dict[str, Any], origins: dict[str, str], value: Any, origin: str) -> None:
        section = raw.setdefault(table, {})
        if isinstance(section, dict):  # else the file's own value is reported as not a table
            section[key] = value
            origins[f"{table}.{key}"] = origin

    return setter


def _set_every_pool(key: str, *, retry: bool = False) -> _Setter:
    def setter(raw: dict[str, Any], origins: dict[str, str], value: Any, origin: str) -> None:
        for i, pool in enumerate(raw.get("pool") or []):
            if not isinstance(pool, dict):
                continue
            if retry:
                pool.setdefault("retry", {})[key] = value
                origins[f"pool[{i}].retry.{key}"] = origin
            else:
                pool[key] = value
                origins[f"pool[{i}].{key}"] = origin

    return setter


def _set_tubes(raw: dict[str, Any], origins: dict[str, str], value: Any, origin: str) -> None:
    # --tube replaces the file's pools with one pool; the other pool flags then apply to it.
    raw["pool"] = [{"name": "default", "tubes": value}]
    origins["pool[0].tubes"] = origin
    origins["pool[0].name"] = origin


# (variable suffix, Overrides attribute, flag, setter). Order matters: tubes first, since
# it replaces the pools that the others then adjust.
_LAYERS: Final[tuple[tuple[str, str, str, _Setter], ...]] = (
    ("TUBES", "tubes", "--tube", _set_tubes),
    ("SERVERS", "servers", "--server", _set_in("worker", "servers")),
    ("DRAIN_TIMEOUT", "drain_timeout", "--drain-timeout", _set_in("worker", "drain_timeout")),
    ("CONCURRENCY", "concurrency", "--concurrency", _set_every_pool("concurrency")),
    ("HANDLER", "handler", "--handler", _set_every_pool("handler")),
    ("PROFILE", "profile", "--profile", _set_every_pool("profile")),
    ("MAX_ATTEMPTS", "max_attempts", "--max-attempts", _set_every_pool("max_attempts", retry=True)),
    ("LOG_FORMAT", "log_format", "--log-format", _set_in("logging", "format")),
    ("LOG_LEVEL", "log_level", "--log-level", _set_in("logging", "level")),
    ("CONTROL", "control", "--control", _set_in("control", "listen")),
    (
        "CONTROL_TOKEN_FILE",
        "control_token_file",
        "--control-token-file",
        _set_in("control", "token_file"),
    ),
)
ENV_PREFIX: Final = "TUBEWORKER_"


def _read_file(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ConfigError("no such file", source=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", source=str(path)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(_not_utf8(data, exc), source=str(path)) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", source=str(path)) from None


def _not_utf8(data: bytes, exc: UnicodeDecodeError) -> str:
    """Where a file stops being UTF-8 (TOML is UTF-8 only), in a form an editor can find."""
    line = data.count(b"\n", 0, exc.start) + 1
    return (
        f"not UTF-8 (TOML files must be): byte 0x{data[exc.start]:02x} at byte offset "
        f"{exc.start} (line {line}): {exc.reason}; save the file as UTF-8"
    )


def _apply_layers(
    raw: dict[str, Any], origins: dict[str, str], env: Mapping[str, str], overrides: Overrides
) -> None:
    # --tube/TUBEWORKER_TUBES rebuild the pools, so they go first (flag over variable);
    # then every other variable, then every other flag, each over what came before.
    tubes, rest = _LAYERS[:1], _LAYERS[1:]
    for group in (tubes, rest):
        for suffix, _attr, _flag, setter in group:
            text = env.get(ENV_PREFIX + suffix)
            if text and not (group is tubes and overrides.tubes):
                setter(raw, origins, text, f"environment {ENV_PREFIX}{suffix}")
        for _suffix, attr, flag, setter in group:
            value = getattr(overrides, attr)
            if value is not None and value != ():
                setter(raw, origins, list(value) if isinstance(value, tuple) else value, flag)


@dataclass(frozen=True, slots=True)
class ConfigReport:
    """What :func:`validate_config` found. ``config`` is meaningful only when ``problems``
    is empty: with problems it is read with defaults in place of the bad values (``check``
    and ``handlers`` still show what they can from it), and None when the file could not
    be read at all."""

    config: Config | None
    problems: tuple[ConfigError, ...]


def validate_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Overrides | None = None,
) -> ConfigReport:
    """Read, layer and validate, finding every problem in one pass (at most one per key),
    each a ConfigError naming source, key and problem."""
    env = os.environ if env is None else env
    if path is None and env.get(ENV_PREFIX + "CONFIG"):
        path = env[ENV_PREFIX + "CONFIG"]
    try:
        raw = _read_file(path) if path is not None else {}
    except ConfigError as exc:
        return ConfigReport(None, (exc,))
    origins = {"": str(path) if path else "command line"}
    _apply_layers(raw, origins, env, overrides or Overrides())
    problems = _Problems()
    config = _build(raw, origins, problems)
    if path is not None:
        config = replace(config, config_dir=Path(path).resolve().parent)
    return ConfigReport(config, tuple(problems.errors))


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Overrides | None = None,
) -> Config:
    """Read, layer and validate. Raises ConfigError (the first problem :func:`validate_config`
    finds) naming source, key and problem."""
    report = validate_config(path, env=env, overrides=overrides)
    if report.problems:
        raise report.problems[0]
    assert report.config is not None
    return report.config
