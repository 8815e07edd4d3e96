"""Configuration: TOML file, ``TUBEWORKER_*`` environment, command-line flags, defaults.

Precedence: flags > environment > file > defaults. Everything is validated before anything
connects; each problem is a :class:`ConfigError` naming where it came from (the file, the
variable or the flag), the key, and what is wrong. :func:`validate_config` finds every
problem in one pass; :func:`load_config` raises the first. The CLI prints them, one a
line, and exits 78.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from tubeworker.config_model import (
    DURATION,
    LOG_LEVELS,
    ApiConfig,
    Config,
    ControlConfig,
    HeartbeatConfig,
    LimitConfig,
    LogFormat,
    LoggingConfig,
    MiddlewareConfig,
    Overrides,
    PoolConfig,
    Profile,
    RecycleConfig,
    RetrySettings,
    ScheduleConfig,
    duration_seconds,
)
from tubeworker.config_reader import Problems
from tubeworker.config_sections import build
from tubeworker.errors import ConfigError

__all__ = [
    "DURATION",
    "ENV_PREFIX",
    "LOG_LEVELS",
    "ApiConfig",
    "Config",
    "ConfigReport",
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
    "load_config",
    "validate_config",
]


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
    problems = Problems()
    config = build(raw, origins, problems)
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
