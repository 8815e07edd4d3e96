"""The config's sections, each read from its table by a :class:`~config_reader.Reader`,
in the order of config/reference.toml: ``[worker]``, ``[retry]``, ``[logging]``,
``[recycle]``, ``[handlers]``, ``[[pool]]``, ``[control]``, ``[middleware]``,
``[api.NAME]``, ``[[limit]]``, ``[settings.NAME]``,
``[[schedule]]``, ``[[heartbeat]]`` (those two in config_schedules). :func:`build` reads
them all."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from tubeworker.beanstalk.client import Address, parse_address
from tubeworker.beanstalk.protocol import MAX_INT, validate_tube_name
from tubeworker.config_model import (
    LOG_LEVELS,
    ApiConfig,
    Config,
    ControlConfig,
    LimitConfig,
    LoggingConfig,
    MiddlewareConfig,
    PoolConfig,
    RecycleConfig,
    RetrySettings,
)
from tubeworker.config_reader import Problems, Reader, tube_patterns
from tubeworker.config_schedules import heartbeats, schedules
from tubeworker.config_security import security, tls
from tubeworker.errors import LocalProtocolError
from tubeworker.redact import is_path

__all__ = ["build"]

# Every default is a field default of the classes above, read from these when a key is
# absent: one place (config/reference.toml lists the same values; a test keeps them equal).
_D_CONFIG: Final = Config(pools=())
_D_POOL: Final = PoolConfig("", ())
_D_LOGGING: Final = LoggingConfig()
_D_RECYCLE: Final = RecycleConfig()
_D_CONTROL: Final = ControlConfig()
_D_API: Final = ApiConfig("")
_D_LIMIT: Final = LimitConfig("", rate=1.0)  # (a limit needs a cap; its other defaults)


_RETRY_KEYS: Final = (
    "max_attempts",
    "backoff_base",
    "backoff_cap",
    "redelivery_limit",
    "newer_version_delay",
)
_POOL_KEYS: Final = (
    "jobs_per_connection",
    "require_signature",
    "name",
    "tubes",
    "concurrency",
    "profile",
    "handler",
    "timeout",
    "servers",
    "retry",
)


def _retry(reader: Reader, base: RetrySettings) -> RetrySettings:
    reader.check_unknown(_RETRY_KEYS)
    settings = RetrySettings(
        max_attempts=reader.integer("max_attempts", base.max_attempts, low=1, high=100_000),
        backoff_base=reader.seconds("backoff_base", base.backoff_base, high=86_400),
        backoff_cap=reader.seconds("backoff_cap", base.backoff_cap, low=1, high=MAX_INT),
        redelivery_limit=reader.integer(
            "redelivery_limit", base.redelivery_limit, low=1, high=1000
        ),
        newer_version_delay=math.ceil(
            reader.seconds("newer_version_delay", base.newer_version_delay, low=1, high=86_400)
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


def _pool(reader: Reader, index: int, retry: RetrySettings) -> PoolConfig:
    reader.check_unknown(_POOL_KEYS)
    name = reader.text("name") or f"pool{index}"
    tubes = tube_patterns(reader, "tubes")
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
        require_signature=(
            reader.boolean("require_signature", False)
            if reader.get("require_signature") is not None
            else None
        ),
    )


def _logging(reader: Reader) -> LoggingConfig:
    reader.check_unknown(("format", "level", "job_lines"))
    fmt = reader.choice("format", "auto", ("auto", "json", "console"))
    return LoggingConfig(
        format="json" if fmt == "json" else "console" if fmt == "console" else "auto",
        level=reader.choice("level", _D_LOGGING.level, LOG_LEVELS),
        job_lines=reader.boolean("job_lines", _D_LOGGING.job_lines),
    )


def _recycle(reader: Reader) -> RecycleConfig:
    reader.check_unknown(("max_jobs", "max_memory_mb", "max_lifetime"))
    return RecycleConfig(
        max_jobs=reader.integer("max_jobs", _D_RECYCLE.max_jobs, high=2**62),
        max_memory_mb=reader.integer("max_memory_mb", _D_RECYCLE.max_memory_mb, high=2**40),
        max_lifetime=reader.seconds("max_lifetime", _D_RECYCLE.max_lifetime),
    )


def _control(reader: Reader) -> ControlConfig:
    reader.check_unknown(
        (
            "listen",
            "token_file",
            "metrics_interval",
            "events_per_second",
            "daemons",
            "allowed_hosts",
            "server_max_connections",
            "read_token_file",
            "metrics_token_file",
            "show_bodies_to",
            "redact",
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
        server_max_connections=reader.integer(
            "server_max_connections", _D_CONTROL.server_max_connections, high=10_000_000
        ),
        daemons=daemons,
        allowed_hosts=tuple(h.lower() for h in reader.strings("allowed_hosts") or ()),
        read_token_file=_token_file(reader, "read_token_file"),
        metrics_token_file=_token_file(reader, "metrics_token_file"),
        show_bodies_to=(
            "viewer"
            if reader.choice("show_bodies_to", "operator", ("operator", "viewer")) == "viewer"
            else "operator"
        ),
        redact=_redact_paths(reader),
    )


def _redact_paths(reader: Reader) -> tuple[str, ...]:
    paths = reader.strings("redact") or ()
    for path in paths:
        if not is_path(path):
            return reader.bad(
                "redact", f'each must be a payload path like "payload.card", got {path!r}', ()
            )
    return tuple(paths)


def _listen(reader: Reader) -> Address | None:
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


def _spool_path(reader: Reader) -> Path | None:
    """job.put's spool file: its folder must exist and be writable (the file is made)."""
    name = reader.text("spool")
    if not name:
        return None
    path = Path(name)
    folder = path.parent
    if not folder.is_dir():
        return reader.bad("spool", f"no such folder: {folder}", None)
    if not os.access(folder, os.W_OK):
        return reader.bad("spool", f"cannot write in {folder}", None)
    return path


def _token_file(reader: Reader, key: str = "token_file") -> Path | None:
    """The token file's path, once it is known to be readable UTF-8 text: the control plane
    reads it when it starts."""
    name = reader.text(key)
    if not name:
        return None
    path = Path(name)
    try:
        path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return reader.bad(key, f"no such file: {path}", None)
    except OSError as exc:
        return reader.bad(key, f"cannot read {path}: {exc.strerror}", None)
    except UnicodeDecodeError:
        return reader.bad(key, f"{path} is not UTF-8 text", None)
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


def _apis(reader: Reader) -> tuple[ApiConfig, ...]:
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


def _api_tubes(api: Reader) -> tuple[str, ...]:
    tubes = api.strings("tubes") or ()
    for tube in tubes:
        try:
            validate_tube_name(tube)
        except LocalProtocolError as exc:
            return api.bad("tubes", str(exc), ())
    return tubes


def _limit(reader: Reader, name: str, *, apis: tuple[str, ...] = ()) -> LimitConfig | None:
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


def _limits(top: Reader, apis: tuple[ApiConfig, ...]) -> tuple[LimitConfig, ...]:
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


def _middleware(reader: Reader) -> MiddlewareConfig:
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
    "spool",
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
    "schedule",
    "heartbeat",
    "security",
    "tls",
)
_TARGET: Final = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def _handlers(reader: Reader) -> tuple[tuple[str, str], ...]:
    targets: list[tuple[str, str]] = []
    for name, target in reader.table.items():
        if not isinstance(target, str) or not _TARGET.match(target):
            reader.report(name, f"must be 'module:function', got {target!r}")
        else:
            targets.append((name, target))
    return tuple(sorted(targets))


def _handler_settings(reader: Reader) -> Mapping[str, Mapping[str, object]]:
    settings: dict[str, Mapping[str, object]] = {}
    for name, value in reader.table.items():
        reader.used.add(name)
        if not isinstance(value, dict):
            reader.report(name, 'must be a table of options ([settings."HANDLER"])')
        else:
            settings[name] = MappingProxyType(dict(value))
    return MappingProxyType(settings)


def _worker(reader: Reader, source: str) -> Config:
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
        spool=_spool_path(reader),
        source=source,
    )


def _pools(top: Reader, retry: RetrySettings) -> tuple[PoolConfig, ...]:
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


def build(raw: dict[str, Any], origins: dict[str, str], problems: Problems) -> Config:
    """The config, reading the sections in the order of config/reference.toml (so problems
    are listed in that order); each problem goes to ``problems``, a default standing in."""
    top = Reader(raw, "", origins, problems)
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
        schedules=schedules(top),
        heartbeats=heartbeats(top),
        security=security(top.table_at("security")),
        tls=tls(top.table_at("tls")),
    )
