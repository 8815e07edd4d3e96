"""The handler registry: entry-point discovery, [handlers] targets, and start-up checks."""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import tubeworker.handlers.demo
from tubeworker.errors import ConfigError
from tubeworker.job import Job, handler
from tubeworker.registry import BrokenHandler, Registry, discover, load_targets

DEMO_NAMES = ["demo.checksum", "demo.echo", "demo.fail", "demo.flaky", "demo.sleep"]
PLUGIN = "tubeworker_test_plugin"


async def plain(job: Job) -> None:
    pass


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A real importable module ``tubeworker_test_plugin`` (write its source to the path)."""
    path = tmp_path / f"{PLUGIN}.py"
    monkeypatch.syspath_prepend(str(tmp_path))
    yield path
    sys.modules.pop(PLUGIN, None)


def write_plugin(path: Path, source: str) -> None:
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    importlib.invalidate_caches()


def config_error_from_load(registry: Registry, name: str, target: str) -> ConfigError:
    """The one problem ``load_targets`` returns for the entry (it raises nothing)."""
    (problem,) = load_targets(registry, [(name, target)], source="tubeworker.toml")
    return problem


# --------------------------------------------------------------------------- Registry


def test_given_functions_when_registry_built_then_get_returns_their_specs() -> None:
    @handler(timeout=3)
    async def decorated(job: Job) -> None:
        pass

    registry = Registry.from_functions({"a.plain": plain, "a.decorated": decorated})
    plain_spec = registry.get("a.plain")
    decorated_spec = registry.get("a.decorated")
    assert plain_spec is not None
    assert plain_spec.func is plain
    assert plain_spec.timeout is None
    assert decorated_spec is not None
    assert decorated_spec.timeout == 3
    assert registry.get("a.other") is None
    registered = registry.handlers["a.plain"]
    assert registered.distribution == "(local)"
    assert registered.target == f"{__name__}:plain"


def test_given_handler_name_matching_its_entry_when_registered_then_accepted() -> None:
    @handler(name="mail.send")
    async def send(job: Job) -> None:
        pass

    registry = Registry.from_functions({"mail.send": send})
    assert registry.get("mail.send") is not None


def test_given_handler_name_differing_from_its_entry_when_registered_then_error() -> None:
    @handler(name="x")
    async def send(job: Job) -> None:
        pass

    with pytest.raises(ValueError, match=r"name='x'.*'y'"):
        Registry.from_functions({"y": send})


def test_given_non_callable_when_registered_then_type_error() -> None:
    with pytest.raises(TypeError, match="not callable"):
        Registry.from_functions({"x": "not a function"})  # type: ignore[dict-item]


def test_given_registered_names_when_required_then_no_error() -> None:
    registry = Registry.from_functions({"a": plain, "b": plain})
    registry.require(["a", "b", "a"])
    registry.require([])


def test_given_unknown_name_when_required_then_error_lists_known_names() -> None:
    registry = Registry.from_functions({"b.two": plain, "a.one": plain})
    with pytest.raises(ConfigError) as info:
        registry.require(["a.one", "c.three"], source="pool[1].handler")
    message = str(info.value)
    assert "'c.three'" in message
    assert "known: a.one, b.two" in message
    assert info.value.source == "pool[1].handler"


def test_given_empty_registry_when_required_then_error_says_none_known() -> None:
    with pytest.raises(ConfigError, match=r"known: none"):
        Registry({}).require(["x"])


def test_given_broken_handler_when_required_then_error_carries_its_error() -> None:
    broken = BrokenHandler("bad.one", "acme-plugins", "acme.bad:one", "ImportError: no numpy")
    registry = Registry({}, {"bad.one": broken})
    with pytest.raises(ConfigError) as info:
        registry.require(["bad.one"])
    message = str(info.value)
    assert "'bad.one'" in message
    assert "acme.bad:one" in message
    assert "acme-plugins" in message
    assert "ImportError: no numpy" in message


def test_given_broken_handler_not_needed_when_required_then_no_error() -> None:
    broken = BrokenHandler("bad.one", "acme", "acme.bad:one", "ImportError")
    registry = Registry.from_functions({"good": plain})
    registry.broken["bad.one"] = broken
    registry.require(["good"])
    assert registry.get("bad.one") is None


# --------------------------------------------------------------------------- load_targets


def test_given_real_module_target_when_loaded_then_handler_registered() -> None:
    registry = Registry.from_functions({"other": plain})
    load_targets(registry, [("my.echo", "tubeworker.handlers.demo:echo")], source="tubeworker.toml")
    spec = registry.get("my.echo")
    assert spec is not None
    assert spec.func is tubeworker.handlers.demo.echo
    assert registry.handlers["my.echo"].distribution == "(config)"
    assert registry.handlers["my.echo"].target == "tubeworker.handlers.demo:echo"
    registry.require(["my.echo", "other"])


def test_given_dotted_attribute_target_when_loaded_then_found(plugin: Path) -> None:
    write_plugin(
        plugin,
        """
        class Tasks:
            @staticmethod
            async def run(job):
                pass
        """,
    )
    registry = Registry({})
    load_targets(registry, [("t.run", f"{PLUGIN}:Tasks.run")], source="f.toml")
    spec = registry.get("t.run")
    assert spec is not None
    assert spec.is_async


def test_given_missing_module_when_loaded_then_config_error() -> None:
    registry = Registry({})
    error = config_error_from_load(registry, "x", "no_such_module_for_tubeworker:f")
    assert error.key == "handlers.x"
    assert error.source == "tubeworker.toml"
    assert "ModuleNotFoundError" in str(error)
    assert "no_such_module_for_tubeworker:f" in str(error)
    # Listed as broken, as a broken entry point is (`tubeworker handlers -c`).
    broken = registry.broken["x"]
    assert (broken.distribution, broken.target) == ("(config)", "no_such_module_for_tubeworker:f")
    assert broken.error.startswith("ModuleNotFoundError")
    assert registry.get("x") is None


def test_given_a_bad_entry_among_good_ones_when_loaded_then_the_others_still_load() -> None:
    registry = Registry({})
    problems = load_targets(
        registry,
        [
            ("a", "tubeworker.handlers.demo:echo"),
            ("b", "no_such_module_for_tubeworker:f"),
            ("c", "tubeworker.handlers.demo:no_such_function"),
            ("d", "tubeworker.handlers.demo:fail"),
        ],
        source="f.toml",
    )
    assert [p.key for p in problems] == ["handlers.b", "handlers.c"]
    assert sorted(registry.handlers) == ["a", "d"]
    assert sorted(registry.broken) == ["b", "c"]


def test_given_missing_attribute_when_loaded_then_config_error() -> None:
    error = config_error_from_load(Registry({}), "x", "tubeworker.handlers.demo:no_such_function")
    assert error.key == "handlers.x"
    assert "AttributeError" in str(error)
    assert "no_such_function" in str(error)


def test_given_module_failing_at_import_when_loaded_then_config_error(plugin: Path) -> None:
    write_plugin(plugin, 'raise RuntimeError("plugin exploded")\n')
    error = config_error_from_load(Registry({}), "x", f"{PLUGIN}:f")
    assert "RuntimeError: plugin exploded" in str(error)


def test_given_mismatched_handler_name_when_loaded_then_config_error(plugin: Path) -> None:
    write_plugin(
        plugin,
        """
        from tubeworker import handler

        @handler(name="x")
        async def f(job):
            pass
        """,
    )
    error = config_error_from_load(Registry({}), "y", f"{PLUGIN}:f")
    assert error.key == "handlers.y"
    assert "does not match" in str(error)


def test_given_non_callable_target_when_loaded_then_config_error() -> None:
    error = config_error_from_load(Registry({}), "x", "tubeworker.handlers.demo:__doc__")
    assert "not callable" in str(error)


def test_given_name_already_registered_when_loaded_then_config_error() -> None:
    registry = Registry.from_functions({"demo.echo": plain})
    error = config_error_from_load(registry, "demo.echo", "tubeworker.handlers.demo:echo")
    assert error.key == "handlers.demo.echo"
    assert "'demo.echo'" in str(error)
    assert registry.get("demo.echo") is not None
    assert registry.get("demo.echo").func is plain  # type: ignore[union-attr]


def test_given_name_of_a_broken_handler_when_loaded_then_config_error() -> None:
    registry = Registry({}, {"x": BrokenHandler("x", "d", "m:f", "ImportError")})
    error = config_error_from_load(registry, "x", "tubeworker.handlers.demo:echo")
    assert error.key == "handlers.x"


def test_given_same_name_twice_in_targets_when_loaded_then_config_error() -> None:
    registry = Registry({})
    (problem,) = load_targets(
        registry,
        [("x", "tubeworker.handlers.demo:echo"), ("x", "tubeworker.handlers.demo:fail")],
        source="f.toml",
    )
    assert problem.key == "handlers.x"
    spec = registry.get("x")
    assert spec is not None
    assert spec.func is tubeworker.handlers.demo.echo  # the first one stays


# --------------------------------------------------------------------------- discover


def test_given_this_distribution_when_discovered_then_five_demo_handlers() -> None:
    registry = discover()
    demo = sorted(name for name in registry.handlers if name.startswith("demo."))
    assert demo == DEMO_NAMES
    assert not [name for name in registry.broken if name.startswith("demo.")]
    for name in DEMO_NAMES:
        registered = registry.handlers[name]
        assert registered.distribution == "tubeworker"
        assert registered.target == f"tubeworker.handlers.demo:{name.removeprefix('demo.')}"
        assert registered.spec.func is getattr(tubeworker.handlers.demo, name.removeprefix("demo."))
    registry.require(DEMO_NAMES)


def test_given_demo_checksum_when_discovered_then_it_is_sync() -> None:
    spec = discover().get("demo.checksum")
    assert spec is not None
    assert not spec.is_async
    echo = discover().get("demo.echo")
    assert echo is not None
    assert echo.is_async


def test_given_unused_group_when_discovered_then_empty() -> None:
    registry = discover("tubeworker.no-such-group")
    assert registry.handlers == {}
    assert registry.broken == {}


def test_given_bad_plugins_when_discovered_then_recorded_as_broken_not_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    group = "tubeworker.test-group"
    points = importlib.metadata.EntryPoints(
        [
            importlib.metadata.EntryPoint("ok", "tubeworker.handlers.demo:echo", group),
            importlib.metadata.EntryPoint(
                "ok", "tubeworker.handlers.demo:echo", group
            ),  # seen twice
            importlib.metadata.EntryPoint("missing", "no_such_module_for_tubeworker:f", group),
            importlib.metadata.EntryPoint("twice", "tubeworker.handlers.demo:fail", group),
            importlib.metadata.EntryPoint("twice", "tubeworker.handlers.demo:flaky", group),
        ]
    )
    monkeypatch.setattr(
        importlib.metadata, "entry_points", lambda group: points.select(group=group)
    )
    registry = discover(group)
    assert sorted(registry.handlers) == ["ok"]
    assert sorted(registry.broken) == ["missing", "twice"]
    assert "ModuleNotFoundError" in registry.broken["missing"].error
    assert "registered twice" in registry.broken["twice"].error
    assert "tubeworker.handlers.demo:fail" in registry.broken["twice"].error
    assert "tubeworker.handlers.demo:flaky" in registry.broken["twice"].error
    with pytest.raises(ConfigError, match="registered twice"):
        registry.require(["twice"])
