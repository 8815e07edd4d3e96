"""Config: layering (flags > environment > file > defaults), durations, and precise errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tubeworker.beanstalk.client import Address
from tubeworker.config import Config, Overrides, load_config, validate_config
from tubeworker.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"

TWO_POOLS = """
[[pool]]
name = "mail"
tubes = ["emails"]
concurrency = 5

[[pool]]
name = "reports"
tubes = ["reports", "exports"]
"""


@pytest.fixture
def write(tmp_path: Path):
    """Write a TOML file and return its path."""

    def write(text: str, name: str = "tubeworker.toml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


def pool_file(write, body: str = "", *, pool: str = "") -> Path:
    """A file with one valid pool, plus ``pool`` lines inside it and ``body`` after it."""
    return write(f'[[pool]]\ntubes = ["t"]\n{pool}\n{body}')


def config_error(path: Path | str | None, **kwargs) -> ConfigError:
    kwargs.setdefault("env", {})
    with pytest.raises(ConfigError) as info:
        load_config(path, **kwargs)
    return info.value


# --------------------------------------------------------------------------- defaults


def test_given_minimal_pool_when_loaded_then_defaults_fill_the_rest(write) -> None:
    config = load_config(write('[[pool]]\ntubes = ["emails"]\n'), env={})
    assert isinstance(config, Config)
    (pool,) = config.pools
    assert pool.name == "pool0"
    assert pool.tubes == ("emails",)
    assert pool.concurrency == 10
    assert pool.profile == "io"
    assert pool.handler is None
    assert pool.timeout is None
    assert pool.servers == ()
    assert pool.retry.max_attempts == 10
    assert config.servers == (Address(),)
    assert config.drain_timeout == 25.0
    assert config.handlers == ()
    assert config.total_concurrency == 10


@pytest.mark.parametrize(("cpus", "expected"), [(8, 7), (2, 1), (1, 1)])
def test_given_compute_profile_when_no_concurrency_then_cpus_minus_one(
    write, monkeypatch: pytest.MonkeyPatch, cpus: int, expected: int
) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: cpus)
    config = load_config(pool_file(write, pool='profile = "compute"'), env={})
    assert config.pools[0].profile == "compute"
    assert config.pools[0].concurrency == expected


def test_given_file_values_when_loaded_then_each_section_is_read(write) -> None:
    path = write(
        """
        [worker]
        servers = ["10.0.0.1:11301", "unix:/run/beanstalkd.sock"]
        drain_timeout = "1m"
        reserve_timeout = 3

        [retry]
        max_attempts = 4
        backoff_base = 1
        backoff_cap = "10m"

        [logging]
        format = "JSON"
        level = "debug"
        job_lines = false

        [recycle]
        max_jobs = 1000

        [handlers]
        "local.echo" = "tubeworker.handlers.demo:echo"

        [[pool]]
        name = "mail"
        tubes = ["emails"]
        handler = "local.echo"
        timeout = "250ms"
        servers = ["[::1]:11300"]
        retry = { max_attempts = 2 }
        """
    )
    config = load_config(path, env={})
    assert config.servers == (Address("10.0.0.1", 11301), Address(unix_path="/run/beanstalkd.sock"))
    assert config.drain_timeout == 60.0
    assert config.reserve_timeout == 3
    assert config.logging.format == "json"
    assert config.logging.level == "debug"
    assert config.logging.job_lines is False
    assert config.recycle.max_jobs == 1000
    assert config.handlers == (("local.echo", "tubeworker.handlers.demo:echo"),)
    assert config.source == str(path)
    (pool,) = config.pools
    assert pool.handler == "local.echo"
    assert pool.timeout == 0.25
    assert pool.servers == (Address("::1", 11300),)
    # The pool's retry table overrides the top-level one key by key.
    assert pool.retry.max_attempts == 2
    assert pool.retry.backoff_base == 1.0
    assert pool.retry.backoff_cap == 600.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30", 30.0),
        ("2.5", 2.5),
        ('"30s"', 30.0),
        ('"5m"', 300.0),
        ('"250ms"', 0.25),
        ('"2h"', 7200.0),
        ('" 45 s "', 45.0),
        ('"12"', 12.0),
    ],
)
def test_given_duration_forms_when_loaded_then_seconds(write, text: str, seconds: float) -> None:
    path = pool_file(write, f"[worker]\ndrain_timeout = {text}\n")
    assert load_config(path, env={}).drain_timeout == seconds


def test_given_glob_patterns_when_loaded_then_accepted_and_flagged(write) -> None:
    path = write(
        """
        [[pool]]
        name = "tenants"
        tubes = ["tenant-*", "region-?", "shard-[0-9]"]
        [[pool]]
        name = "plain"
        tubes = ["emails"]
        """
    )
    tenants, plain = load_config(path, env={}).pools
    assert tenants.tubes == ("tenant-*", "region-?", "shard-[0-9]")
    assert tenants.has_globs
    assert not plain.has_globs


# --------------------------------------------------------------------------- layering


def test_given_file_env_and_flag_when_loaded_then_flag_wins(write) -> None:
    path = write(TWO_POOLS)
    env = {"TUBEWORKER_CONCURRENCY": "7"}
    config = load_config(path, env=env, overrides=Overrides(concurrency=9))
    assert [p.concurrency for p in config.pools] == [9, 9]


def test_given_file_and_env_when_no_flag_then_env_wins_for_every_pool(write) -> None:
    config = load_config(write(TWO_POOLS), env={"TUBEWORKER_CONCURRENCY": "7"})
    assert [p.concurrency for p in config.pools] == [7, 7]


def test_given_only_file_when_loaded_then_file_value_over_default(write) -> None:
    config = load_config(write(TWO_POOLS), env={})
    assert [p.concurrency for p in config.pools] == [5, 10]


def test_given_unrelated_environment_when_loaded_then_ignored(write) -> None:
    env = {"HOME": "/root", "TUBEWORKER_CONCURRENCY": "", "OTHER_CONCURRENCY": "3"}
    config = load_config(write(TWO_POOLS), env=env)
    assert [p.concurrency for p in config.pools] == [5, 10]


def test_given_tube_flag_when_loaded_then_one_default_pool_replaces_the_files(write) -> None:
    config = load_config(write(TWO_POOLS), env={}, overrides=Overrides(tubes=("alpha", "beta-*")))
    (pool,) = config.pools
    assert pool.name == "default"
    assert pool.tubes == ("alpha", "beta-*")
    assert pool.concurrency == 10  # the file's pools are gone, their settings with them


def test_given_tubes_env_when_loaded_then_comma_separated_default_pool(write) -> None:
    config = load_config(write(TWO_POOLS), env={"TUBEWORKER_TUBES": "a, b,c"})
    (pool,) = config.pools
    assert pool.name == "default"
    assert pool.tubes == ("a", "b", "c")


def test_given_env_tubes_and_env_concurrency_when_loaded_then_both_apply(write) -> None:
    env = {"TUBEWORKER_TUBES": "jobs", "TUBEWORKER_CONCURRENCY": "7"}
    config = load_config(write(TWO_POOLS), env=env)
    (pool,) = config.pools
    assert (pool.name, pool.tubes, pool.concurrency) == ("default", ("jobs",), 7)


def test_given_tube_flag_and_env_tubes_when_loaded_then_flag_wins() -> None:
    config = load_config(
        None, env={"TUBEWORKER_TUBES": "from-env"}, overrides=Overrides(tubes=("from-flag",))
    )
    assert config.pools[0].tubes == ("from-flag",)
    assert config.source == "command line"


def test_given_no_file_when_tube_and_pool_flags_then_they_apply_to_the_default_pool() -> None:
    overrides = Overrides(
        tubes=("jobs",),
        concurrency=3,
        handler="demo.echo",
        profile="compute",
        max_attempts=2,
        servers=("bs1:11301", "bs2"),
        drain_timeout="5m",
        log_format="console",
        log_level="WARNING",
    )
    config = load_config(None, env={}, overrides=overrides)
    (pool,) = config.pools
    assert (pool.concurrency, pool.handler, pool.profile) == (3, "demo.echo", "compute")
    assert pool.retry.max_attempts == 2
    assert config.servers == (Address("bs1", 11301), Address("bs2"))
    assert config.drain_timeout == 300.0
    assert (config.logging.format, config.logging.level) == ("console", "warning")


def test_given_pool_flags_when_file_has_two_pools_then_every_pool_gets_them(write) -> None:
    overrides = Overrides(handler="demo.echo", profile="compute", max_attempts=4)
    config = load_config(write(TWO_POOLS), env={}, overrides=overrides)
    assert [(p.handler, p.profile, p.retry.max_attempts) for p in config.pools] == [
        ("demo.echo", "compute", 4),
        ("demo.echo", "compute", 4),
    ]


@pytest.mark.parametrize("with_file", [False, True])
def test_given_tube_flag_and_env_pool_settings_when_loaded_then_env_still_applies(
    write, with_file: bool
) -> None:
    # Flags > env is about the same setting: --tube says which tubes, the environment
    # still says how many at once (nothing on the command line contradicts it).
    env = {"TUBEWORKER_CONCURRENCY": "7", "TUBEWORKER_MAX_ATTEMPTS": "3"}
    path = write(TWO_POOLS) if with_file else None
    config = load_config(path, env=env, overrides=Overrides(tubes=("jobs",)))
    (pool,) = config.pools
    assert (pool.concurrency, pool.retry.max_attempts) == (7, 3)


def test_given_config_variable_when_path_is_none_then_it_names_the_file(write) -> None:
    path = write(TWO_POOLS, name="from-env.toml")
    config = load_config(None, env={"TUBEWORKER_CONFIG": str(path)})
    assert config.source == str(path)
    assert [p.name for p in config.pools] == ["mail", "reports"]


def test_given_config_variable_when_path_is_given_then_path_wins(write) -> None:
    path = write(TWO_POOLS)
    config = load_config(path, env={"TUBEWORKER_CONFIG": "/nonexistent/x.toml"})
    assert config.source == str(path)


def test_given_env_scalars_when_loaded_then_they_override_the_file(write) -> None:
    path = write(TWO_POOLS + '\n[worker]\ndrain_timeout = 10\n[logging]\nlevel = "error"\n')
    env = {
        "TUBEWORKER_DRAIN_TIMEOUT": "2m",
        "TUBEWORKER_LOG_LEVEL": "debug",
        "TUBEWORKER_SERVERS": "a:1,b:2",
        "TUBEWORKER_PROFILE": "compute",
    }
    config = load_config(path, env=env)
    assert config.drain_timeout == 120.0
    assert config.logging.level == "debug"
    assert config.servers == (Address("a", 1), Address("b", 2))
    assert {p.profile for p in config.pools} == {"compute"}


# --------------------------------------------------------------------------- errors: files


def test_given_missing_file_when_loaded_then_error_names_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    error = config_error(path)
    assert str(path) in str(error)
    assert "no such file" in str(error)


def test_given_missing_file_named_by_env_when_loaded_then_error_names_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    error = config_error(None, env={"TUBEWORKER_CONFIG": str(path)})
    assert str(path) in str(error)


def test_given_directory_as_file_when_loaded_then_config_error(tmp_path: Path) -> None:
    error = config_error(tmp_path)
    assert str(tmp_path) in str(error)
    assert "cannot read" in str(error)


def test_given_invalid_toml_when_loaded_then_error_says_toml_and_line(write) -> None:
    path = write('[[pool]]\ntubes = ["a"\nname = "x"\n')
    error = config_error(path)
    assert str(path) in str(error)
    assert "TOML" in str(error)
    assert "line" in str(error)


def test_given_latin1_file_when_loaded_then_config_error_names_the_byte_offset(
    tmp_path: Path,
) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[[pool]]\ntubes = ["café"]\n'.encode("latin-1"))
    error = config_error(path)
    assert error.source == str(path)
    assert "not UTF-8" in str(error)
    assert "byte 0xe9 at byte offset 22 (line 2)" in str(error)


def test_given_no_pools_when_loaded_then_error_says_how_to_add_one(write) -> None:
    error = config_error(write("[worker]\ndrain_timeout = 5\n"))
    assert "no pools" in str(error)
    assert "--tube" in str(error)
    assert error.key == "pool"


def test_given_no_file_and_no_tubes_when_loaded_then_no_pools_from_command_line() -> None:
    error = config_error(None)
    assert error.source == "command line"
    assert "no pools" in str(error)


def test_given_pool_as_table_when_loaded_then_error_asks_for_array(write) -> None:
    error = config_error(write('[pool]\ntubes = ["a"]\n'))
    assert "[[pool]]" in str(error)


def test_given_duplicate_pool_names_when_loaded_then_error_names_the_name(write) -> None:
    path = write('[[pool]]\nname = "x"\ntubes = ["a"]\n[[pool]]\nname = "x"\ntubes = ["b"]\n')
    error = config_error(path)
    assert str(path) in str(error)
    assert "'x'" in str(error)


# --------------------------------------------------------------------------- errors: keys


@pytest.mark.parametrize(
    ("text", "key", "suggestion"),
    [
        ('[[pool]]\ntubes = ["a"]\nconcurency = 3\n', "pool[0].concurency", "concurrency"),
        ('[[pool]]\ntubes = ["a"]\n[[pool]]\ntube = ["b"]\n', "pool[1].tube", "tubes"),
        ('[[pools]]\ntubes = ["a"]\n', "pools", "pool"),
        ('[[pool]]\ntubes = ["a"]\n[worker]\ndrain_timout = 3\n', "worker.drain_timout", None),
        (
            '[[pool]]\ntubes = ["a"]\nretry = { max_attempt = 3 }\n',
            "pool[0].retry.max_attempt",
            "max_attempts",
        ),
        ('[[pool]]\ntubes = ["a"]\n[logging]\nlevl = "info"\n', "logging.levl", "level"),
    ],
)
def test_given_unknown_key_when_loaded_then_error_names_key_and_suggests(
    write, text: str, key: str, suggestion: str | None
) -> None:
    path = write(text)
    error = config_error(path)
    assert error.key == key
    assert str(path) in str(error)
    assert key in str(error)
    assert "unknown key" in str(error)
    if suggestion is not None:
        assert f"did you mean {suggestion!r}" in str(error)


def test_given_unknown_key_far_from_any_when_loaded_then_no_suggestion(write) -> None:
    error = config_error(write('[[pool]]\ntubes = ["a"]\nzzzzzz = 1\n'))
    assert "did you mean" not in str(error)
    assert "known keys" in str(error)


@pytest.mark.parametrize(
    ("tube", "problem"),
    [
        ("has space", "not a valid tube name"),
        ("-leading", "not a valid tube name"),
        ("x" * 201, "not a valid tube name"),
        ("", "not a valid tube name"),
        ("tenant *", "not a valid tube name or pattern"),
        ("-tenant*", "not a valid tube name or pattern"),
        ("naïve", "not a valid tube name"),
    ],
)
def test_given_bad_tube_or_pattern_when_loaded_then_error(write, tube: str, problem: str) -> None:
    path = write(f'[[pool]]\ntubes = ["ok", "{tube}"]\n')
    error = config_error(path)
    assert error.key == "pool[0].tubes"
    assert problem in str(error)
    assert str(path) in str(error)


def test_given_200_char_tube_when_loaded_then_accepted(write) -> None:
    config = load_config(write(f'[[pool]]\ntubes = ["{"x" * 200}"]\n'), env={})
    assert config.pools[0].tubes == ("x" * 200,)


def test_given_empty_tubes_when_loaded_then_error_needs_a_tube(write) -> None:
    error = config_error(write("[[pool]]\ntubes = []\n"))
    assert error.key == "pool[0].tubes"
    assert "at least one" in str(error)


def test_given_bad_tube_from_flag_when_loaded_then_error_names_the_flag() -> None:
    error = config_error(None, overrides=Overrides(tubes=("bad tube",)))
    assert error.source == "--tube"
    assert str(error).startswith("--tube: pool[0].tubes: ")


@pytest.mark.parametrize(
    ("servers", "problem"),
    [
        ('["host:0"]', "port must be 1..65535"),
        ('["host:99999"]', "port must be 1..65535"),
        ('["host:abc"]', "port must be 1..65535"),
        ('["[::1"]', "missing ']'"),
        ('[":11300"]', "empty host"),
        ('["unix:"]', "socket path"),
        ("[]", "at least one server"),
        ("[1]", "list of strings"),
    ],
)
def test_given_bad_server_when_loaded_then_error(write, servers: str, problem: str) -> None:
    path = pool_file(write, f"[worker]\nservers = {servers}\n")
    error = config_error(path)
    assert error.key == "worker.servers"
    assert problem in str(error)


def test_given_bad_server_in_env_when_loaded_then_error_names_the_variable(write) -> None:
    error = config_error(pool_file(write), env={"TUBEWORKER_SERVERS": "host:0"})
    assert str(error).startswith("environment TUBEWORKER_SERVERS: worker.servers: ")


@pytest.mark.parametrize(
    ("pool", "body", "key", "problem"),
    [
        ("concurrency = 0", "", "pool[0].concurrency", "between 1 and 100000"),
        ("concurrency = 100001", "", "pool[0].concurrency", "between 1 and 100000"),
        ("concurrency = -1", "", "pool[0].concurrency", "between 1 and 100000"),
        ("timeout = -1", "", "pool[0].timeout", "between"),
        ("retry = { max_attempts = 0 }", "", "pool[0].retry.max_attempts", "between 1"),
        ("retry = { redelivery_limit = 0 }", "", "pool[0].retry.redelivery_limit", "between 1"),
        ("", "[worker]\ndrain_timeout = 86401", "worker.drain_timeout", "between"),
        ("", "[worker]\nreserve_timeout = 0", "worker.reserve_timeout", "between 1"),
        ("", "[worker]\nconnect_timeout = 0.01", "worker.connect_timeout", "between"),
        ("", "[worker]\ndrain_timeout = nan", "worker.drain_timeout", "between"),
        ("", "[worker]\ndrain_timeout = inf", "worker.drain_timeout", "between"),
        ("", "[retry]\nbackoff_cap = 0", "retry.backoff_cap", "between 1"),
    ],
)
def test_given_out_of_range_number_when_loaded_then_error(
    write, pool: str, body: str, key: str, problem: str
) -> None:
    path = pool_file(write, body, pool=pool)
    error = config_error(path)
    assert error.key == key
    assert problem in str(error)
    assert str(error).startswith(f"{path}: {key}: ")


@pytest.mark.parametrize(
    ("pool", "body", "key", "problem"),
    [
        ('concurrency = "five"', "", "pool[0].concurrency", "whole number"),
        ("concurrency = true", "", "pool[0].concurrency", "whole number"),
        ("concurrency = 2.5", "", "pool[0].concurrency", "whole number"),
        ('profile = "gpu"', "", "pool[0].profile", "one of io, compute"),
        ("name = 3", "", "pool[0].name", "non-empty string"),
        ('name = ""', "", "pool[0].name", "non-empty string"),
        ('handler = ["a"]', "", "pool[0].handler", "non-empty string"),
        ("retry = 3", "", "pool[0].retry", "must be a table"),
        ("", '[worker]\ndrain_timeout = "soon"', "worker.drain_timeout", "duration like"),
        ("", '[worker]\ndrain_timeout = "5 minutes"', "worker.drain_timeout", "duration like"),
        ("", "[worker]\ndrain_timeout = true", "worker.drain_timeout", "number of seconds"),
        ("", '[logging]\njob_lines = "maybe"', "logging.job_lines", "true or false"),
        ("", '[logging]\nformat = "xml"', "logging.format", "one of auto, json, console"),
        ("", '[logging]\nlevel = "loud"', "logging.level", "one of debug"),
    ],
)
def test_given_wrong_type_when_loaded_then_error(
    write, pool: str, body: str, key: str, problem: str
) -> None:
    path = pool_file(write, body, pool=pool)
    error = config_error(path)
    assert error.key == key
    assert problem in str(error)
    assert key in str(error)


def test_given_worker_not_a_table_when_loaded_then_error(write) -> None:
    error = config_error(write('worker = 5\n[[pool]]\ntubes = ["t"]\n'))
    assert error.key == "worker"
    assert "must be a table" in str(error)


def test_given_tubes_not_a_list_when_loaded_then_error(write) -> None:
    error = config_error(write("[[pool]]\ntubes = 5\n"))
    assert error.key == "pool[0].tubes"
    assert "list of strings" in str(error)


def test_given_second_pool_cap_below_base_when_loaded_then_error_names_its_key(write) -> None:
    path = write(
        """
        [[pool]]
        tubes = ["a"]
        [[pool]]
        tubes = ["b"]
        retry = { backoff_base = 60, backoff_cap = 30 }
        """
    )
    error = config_error(path)
    assert error.key == "pool[1].retry.backoff_cap"
    assert ">= backoff_base" in str(error)
    assert str(error).startswith(f"{path}: pool[1].retry.backoff_cap: ")


def test_given_top_level_cap_below_base_when_loaded_then_error(write) -> None:
    error = config_error(pool_file(write, "[retry]\nbackoff_base = 10\nbackoff_cap = 5\n"))
    assert error.key == "retry.backoff_cap"


def test_given_bad_max_attempts_env_when_loaded_then_error_names_variable_and_pool_key(
    write,
) -> None:
    error = config_error(write(TWO_POOLS), env={"TUBEWORKER_MAX_ATTEMPTS": "many"})
    assert str(error).startswith(
        "environment TUBEWORKER_MAX_ATTEMPTS: pool[0].retry.max_attempts: "
    )
    assert "whole number" in str(error)


def test_given_bad_concurrency_env_when_loaded_then_error_names_the_variable(write) -> None:
    error = config_error(write(TWO_POOLS), env={"TUBEWORKER_CONCURRENCY": "-3"})
    assert error.source == "environment TUBEWORKER_CONCURRENCY"
    assert error.key == "pool[0].concurrency"
    assert "environment TUBEWORKER_CONCURRENCY" in str(error)


def test_given_superscript_digit_env_when_loaded_then_config_error(write) -> None:
    error = config_error(write(TWO_POOLS), env={"TUBEWORKER_CONCURRENCY": "²"})
    assert error.source == "environment TUBEWORKER_CONCURRENCY"


def test_given_bad_concurrency_flag_when_loaded_then_error_names_the_flag(write) -> None:
    error = config_error(write(TWO_POOLS), overrides=Overrides(concurrency=0))
    assert str(error).startswith("--concurrency: pool[0].concurrency: ")


def test_given_bad_drain_timeout_flag_when_loaded_then_error_names_flag_and_key(write) -> None:
    error = config_error(write(TWO_POOLS), overrides=Overrides(drain_timeout="soon"))
    assert error.source == "--drain-timeout"
    assert error.key == "worker.drain_timeout"
    assert str(error).startswith("--drain-timeout: worker.drain_timeout: ")


def test_given_bad_profile_flag_when_loaded_then_error_names_the_flag(write) -> None:
    error = config_error(write(TWO_POOLS), overrides=Overrides(profile="gpu"))
    assert error.source == "--profile"
    assert error.key == "pool[0].profile"


def test_given_flag_overrides_bad_env_when_loaded_then_no_error(write) -> None:
    config = load_config(
        write(TWO_POOLS),
        env={"TUBEWORKER_CONCURRENCY": "zero"},
        overrides=Overrides(concurrency=4),
    )
    assert [p.concurrency for p in config.pools] == [4, 4]


@pytest.mark.parametrize(
    "target",
    [
        "tubeworker.handlers.demo",
        "tubeworker.handlers.demo:",
        ":echo",
        "handlers demo:echo",
        "1mod:f",
        "a:b:c",
    ],
)
def test_given_bad_handler_target_when_loaded_then_error(write, target: str) -> None:
    error = config_error(pool_file(write, f'[handlers]\n"my.task" = "{target}"\n'))
    assert error.key == "handlers.my.task"
    assert "'module:function'" in str(error)


def test_given_handler_target_not_a_string_when_loaded_then_error(write) -> None:
    error = config_error(pool_file(write, "[handlers]\ntask = 3\n"))
    assert error.key == "handlers.task"
    assert "'module:function'" in str(error)


def test_given_dotted_handler_target_when_loaded_then_sorted_pairs(write) -> None:
    path = pool_file(write, '[handlers]\nz = "pkg.mod:Class.method"\na = "m:f"\n')
    assert load_config(path, env={}).handlers == (("a", "m:f"), ("z", "pkg.mod:Class.method"))


# --------------------------------------------------------------------------- examples


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.toml")), ids=lambda p: p.name)
def test_given_example_config_when_loaded_then_valid(path: Path) -> None:
    config = load_config(path, env={})
    assert config.pools
    assert config.source == str(path)


def test_handler_settings_are_read_per_handler_and_must_be_tables(write) -> None:
    path = pool_file(write, '[settings."http.request"]\nsigning_secret_file = "/etc/secret"\n')
    config = load_config(path, env={})
    assert dict(config.handler_settings["http.request"]) == {"signing_secret_file": "/etc/secret"}
    error = config_error(pool_file(write, '[settings]\n"http.request" = "no"\n'))
    assert error.key == "settings.http.request"
    assert "table of options" in str(error)


# --------------------------------------------------------------------------- every problem at once


def problems_of(path: Path, **kwargs) -> list[tuple[str | None, str | None]]:
    kwargs.setdefault("env", {})
    report = validate_config(path, **kwargs)
    return [(p.key, p.source) for p in report.problems]


def test_given_three_mistakes_when_validated_then_all_three_in_one_pass(write) -> None:
    path = write(
        """
        [worker]
        drain_timout = 5
        [[pool]]
        tubes = ["a"]
        concurrency = "lots"
        [[pool]]
        tubes = ["b"]
        profile = "gpu"
        """
    )
    report = validate_config(path, env={})
    assert [(p.key, p.source) for p in report.problems] == [
        ("worker.drain_timout", str(path)),
        ("pool[0].concurrency", str(path)),
        ("pool[1].profile", str(path)),
    ]
    assert "did you mean 'drain_timeout'" in str(report.problems[0])
    # load_config still raises, with the first of them
    assert config_error(path).key == "worker.drain_timout"


def test_given_a_bad_value_when_validated_then_no_made_up_second_problem_for_its_key(
    write,
) -> None:
    # tubes = 5 is not a list; read as no tubes it must not also be "needs at least one"
    (problem,) = validate_config(write("[[pool]]\ntubes = 5\n"), env={}).problems
    assert problem.key == "pool[0].tubes"
    assert "list of strings" in problem.problem


def test_given_mistakes_in_every_kind_of_section_when_validated_then_each_is_listed(
    write,
) -> None:
    path = write(
        """
        wrker = 1
        [retry]
        backoff_base = 60
        backoff_cap = 30
        [logging]
        level = "loud"
        [handlers]
        "x" = "nocolon"
        [[pool]]
        tubes = ["bad name"]
        [control]
        listen = "nowhere"
        daemons = ["not a url"]
        [middleware]
        sentry = {}
        [api.partner]
        tubes = ["bad name"]
        probes = 0
        [[limit]]
        rate = -1
        burst = 0
        [settings]
        "http.request" = 3
        """
    )
    assert [key for key, _ in problems_of(path)] == [
        "wrker",
        "retry.backoff_cap",
        "logging.level",
        "handlers.x",
        "pool[0].tubes",
        "control.listen",
        "control.daemons",
        "middleware.sentry",
        "api.partner.tubes",
        "api.partner.probes",
        "limit[0].rate",
        "limit[0].burst",
        "settings.http.request",
    ]


def test_given_a_file_that_cannot_be_read_when_validated_then_one_problem_and_no_config(
    tmp_path: Path,
) -> None:
    report = validate_config(tmp_path / "nope.toml", env={})
    assert report.config is None
    assert [p.problem for p in report.problems] == ["no such file"]


def test_given_a_good_file_when_validated_then_no_problem_and_the_config(write) -> None:
    report = validate_config(pool_file(write), env={})
    assert report.problems == ()
    assert report.config is not None
    assert report.config.pools[0].tubes == ("t",)


def test_given_worker_not_a_table_and_a_server_variable_when_validated_then_a_problem(
    write,
) -> None:
    # The variable has no table to go into: the file's value is the problem (not a crash).
    path = write('worker = 5\n[[pool]]\ntubes = ["t"]\n')
    error = config_error(path, env={"TUBEWORKER_SERVERS": "a:1"})
    assert error.key == "worker"
    assert "must be a table" in str(error)


# --------------------------------------------------------------------------- the control token file


def test_given_token_file_in_file_env_and_flag_when_loaded_then_flag_wins(
    write, tmp_path: Path
) -> None:
    files = {name: tmp_path / name for name in ("file", "env", "flag")}
    for path in files.values():
        path.write_text("token\n")
    config_file = pool_file(write, f'[control]\ntoken_file = "{files["file"]}"\n')
    env = {"TUBEWORKER_CONTROL_TOKEN_FILE": str(files["env"])}
    assert load_config(config_file, env={}).control.token_file == files["file"]
    assert load_config(config_file, env=env).control.token_file == files["env"]
    flag = Overrides(control_token_file=str(files["flag"]))
    assert load_config(config_file, env=env, overrides=flag).control.token_file == files["flag"]


def test_given_missing_token_file_from_the_variable_when_loaded_then_error_names_it(
    write, tmp_path: Path
) -> None:
    env = {"TUBEWORKER_CONTROL_TOKEN_FILE": str(tmp_path / "nope")}
    error = config_error(pool_file(write), env=env)
    assert str(error).startswith("environment TUBEWORKER_CONTROL_TOKEN_FILE: control.token_file: ")
    assert "no such file" in str(error)
    flag = Overrides(control_token_file=str(tmp_path / "nope"))
    assert config_error(pool_file(write), overrides=flag).source == "--control-token-file"


def test_every_environment_variable_is_in_the_docs_list() -> None:
    from tubeworker.config import _LAYERS, ENV_PREFIX

    readme = (CONFIG_DIR.parent / "docs" / "configuration.md").read_text(encoding="utf-8")
    for suffix, _attr, _flag, _setter in _LAYERS:
        assert f"`{ENV_PREFIX}{suffix}`" in readme, suffix
    reference = (CONFIG_DIR / "reference.toml").read_text(encoding="utf-8")
    assert "--control-token-file PATH; environment: TUBEWORKER_CONTROL_TOKEN_FILE" in reference


def test_the_reference_config_lists_every_default_as_it_is() -> None:
    # config/reference.toml documents every key with its default: loading it must give
    # exactly the config of no file at all (with its one example pool's tube).
    reference = load_config(CONFIG_DIR / "reference.toml", env={})
    defaults = load_config(env={}, overrides=Overrides(tubes=("default",)))
    differ = [
        f.name
        for f in dataclasses.fields(reference)
        if f.name not in ("source", "config_dir")
        and getattr(reference, f.name) != getattr(defaults, f.name)
    ]
    assert differ == []


# --------------------------------------------------------------------------- [[schedule]]


def test_given_schedules_when_loaded_then_each_is_read_with_defaults(write) -> None:
    config = load_config(
        pool_file(
            write,
            """
            [[schedule]]
            name = "nightly-report"
            cron = "30 2 * * *"
            timezone = "Europe/Berlin"
            tube = "reports"
            task = "build-report"
            payload = { kind = "daily" }
            misfire = "catch_up"
            catch_up_window = "6h"
            [[schedule]]
            name = "sync"
            every = "5m"
            tube = "t"
            body = "sync"
            """,
        ),
        env={},
    )
    nightly, sync = config.schedules
    assert (nightly.cron, nightly.timezone, nightly.payload) == (
        "30 2 * * *",
        "Europe/Berlin",
        {"kind": "daily"},
    )
    assert (nightly.misfire, nightly.catch_up_window) == ("catch_up", 21600.0)
    assert (sync.every, sync.body, sync.task, sync.misfire) == (300.0, "sync", None, "coalesce")


def test_given_bad_schedules_when_validated_then_every_problem_names_its_field(write) -> None:
    path = pool_file(
        write,
        """
        [[schedule]]
        name = "a"
        cron = "61 2 * * *"
        timezone = "Mars/Olympus"
        tube = "t"
        task = "x"
        [[schedule]]
        name = "a"
        every = "5m"
        task = "x"
        [[schedule]]
        name = "no:colon"
        cron = "* * * * *"
        every = "1m"
        tube = "t"
        [[schedule]]
        name = "c"
        tube = "t"
        task = "x"
        misfire = "later"
        """,
    )
    assert [key for key, _ in problems_of(path)] == [
        "schedule[0].cron",
        "schedule[0].timezone",
        "schedule[1].tube",
        "schedule.no:colon.name",
        "schedule.no:colon.every",
        "schedule.no:colon.task",
        "schedule.c.cron",
        "schedule.c.misfire",
        "schedule[1].name",
    ]


def test_given_overlap_skip_when_loaded_then_read_and_allow_by_default(write) -> None:
    config = load_config(
        pool_file(
            write,
            """
            [[schedule]]
            name = "sync"
            every = "5m"
            tube = "t"
            task = "x"
            overlap = "skip"
            [[schedule]]
            name = "other"
            every = "5m"
            tube = "t"
            task = "x"
            """,
        ),
        env={},
    )
    assert [s.overlap for s in config.schedules] == ["skip", "allow"]


# --------------------------------------------------------------------------- [[heartbeat]]


def test_given_heartbeats_when_loaded_then_each_is_read_with_defaults(write) -> None:
    config = load_config(
        pool_file(
            write,
            """
            [[heartbeat]]
            tube = "emails"
            every = "1m"
            ping_url = "https://hc-ping.example/abc"
            [[heartbeat]]
            tube = "t"
            """,
        ),
        env={},
    )
    emails, t = config.heartbeats
    assert (emails.tube, emails.every, emails.ping_url) == (
        "emails",
        60.0,
        "https://hc-ping.example/abc",
    )
    assert (t.every, t.ping_url, t.priority, t.ttr) == (60.0, None, 1024, 60)


def test_given_bad_heartbeats_when_validated_then_every_problem_names_its_field(write) -> None:
    path = pool_file(
        write,
        """
        [[heartbeat]]
        every = "0.5s"
        ping_url = "ftp://x"
        [[heartbeat]]
        tube = "emails"
        colour = "red"
        [[heartbeat]]
        tube = "emails"
        """,
    )
    assert [key for key, _ in problems_of(path)] == [
        "heartbeat[0].tube",
        "heartbeat[0].every",
        "heartbeat[0].ping_url",
        "heartbeat[1].colour",
        "heartbeat[2].tube",
    ]
