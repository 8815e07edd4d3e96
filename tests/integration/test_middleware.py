"""Middleware around handler runs, in the daemon against a real beanstalkd: the hooks and
their order for each verdict, a failing hook that changes nothing, and the Sentry
integration capturing into sentry-sdk's own transport interface (no network)."""

from __future__ import annotations

from typing import Any

import pytest
import sentry_sdk
import trio
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from tests.support.beanstalkd import BeanstalkdProcess
from tests.support.daemon import make_config, prefill, running_daemon, wait_tubes_empty
from tubeworker import Bury, Job, Middleware, Retry, Verdict, handler
from tubeworker.config import RetrySettings
from tubeworker.envelope import encode_envelope
from tubeworker.errors import ConfigError
from tubeworker.integrations.sentry import SentryMiddleware
from tubeworker.registry import load_middleware


class Recorder(Middleware):
    def __init__(self, name: str, calls: list[tuple[str, ...]]) -> None:
        self.name = name
        self.calls = calls

    async def before(self, job: Job) -> None:
        self.calls.append((self.name, "before", str(job.payload)))

    async def on_error(self, job: Job, error: BaseException, verdict: Verdict, reason: str) -> None:
        self.calls.append((self.name, "on_error", str(job.payload), type(error).__name__, verdict))

    async def after(self, job: Job, verdict: Verdict, reason: str | None) -> None:
        self.calls.append((self.name, "after", str(job.payload), verdict))


class Broken(Middleware):
    async def before(self, job: Job) -> None:
        raise RuntimeError("middleware bug")


@handler(timeout=0.5)
async def outcome_by_payload(job: Job) -> None:
    what = job.payload
    if what == "error":
        raise ValueError("boom")
    if what == "retry":
        raise Retry(delay=100, reason="later")
    if what == "bury":
        raise Bury("not fixable")
    if what == "slow":
        await trio.sleep(10)


async def test_given_middleware_then_hooks_run_in_order_for_every_verdict(
    beanstalkd: BeanstalkdProcess,
) -> None:
    calls: list[tuple[str, ...]] = []
    outer, inner = Recorder("outer", calls), Recorder("inner", calls)
    config = make_config(
        beanstalkd.address,
        concurrency=1,
        retry=RetrySettings(max_attempts=5, backoff_base=100, backoff_cap=100),
    )
    bodies = [encode_envelope("h", p) for p in ("ok", "error", "retry", "bury", "slow")]
    await prefill(beanstalkd.address, "jobs", bodies)
    with trio.fail_after(20):
        async with running_daemon(
            config, {"h": outcome_by_payload}, middleware=[outer, inner, Broken()]
        ) as state:
            await wait_tubes_empty(beanstalkd.address, ["jobs"], buried=1, delayed_ok=True)
            while state.counters.released < 3:  # error, retry and the timeout
                await trio.sleep(0.01)
    by_job: dict[str, list[tuple[str, ...]]] = {}
    for call in calls:
        by_job.setdefault(call[2], []).append(call)
    assert by_job["ok"] == [
        ("outer", "before", "ok"),
        ("inner", "before", "ok"),
        ("inner", "after", "ok", "done"),
        ("outer", "after", "ok", "done"),
    ]
    assert ("inner", "on_error", "error", "ValueError", "retry") in by_job["error"]
    assert ("outer", "on_error", "retry", "Retry", "retry") in by_job["retry"]
    assert ("outer", "on_error", "bury", "Bury", "bury") in by_job["bury"]
    assert ("outer", "on_error", "slow", "TimeoutError", "retry") in by_job["slow"]
    assert by_job["slow"][-1] == ("outer", "after", "slow", "retry")


class CapturingTransport(Transport):
    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)

    def events(self) -> list[dict[str, Any]]:
        return [
            item.payload.json
            for envelope in self.envelopes
            for item in envelope.items
            if item.type == "event" and item.payload.json is not None
        ]


@pytest.fixture
def sentry_transport() -> Any:
    transport = CapturingTransport()
    yield transport
    sentry_sdk.get_global_scope().set_client(None)  # back to no client at all


async def test_given_sentry_middleware_then_failures_and_burials_are_captured_with_job_context(
    beanstalkd: BeanstalkdProcess, sentry_transport: CapturingTransport
) -> None:
    sentry = SentryMiddleware(transport=sentry_transport, environment="test")
    config = make_config(
        beanstalkd.address,
        concurrency=1,
        retry=RetrySettings(max_attempts=5, backoff_base=100, backoff_cap=100),
    )
    await prefill(
        beanstalkd.address, "jobs", [encode_envelope("h", p) for p in ("ok", "error", "bury")]
    )
    with trio.fail_after(20):
        async with running_daemon(config, {"h": outcome_by_payload}, middleware=[sentry]):
            await wait_tubes_empty(beanstalkd.address, ["jobs"], buried=1, delayed_ok=True)
    sentry_sdk.flush()
    events = sentry_transport.events()
    assert len(events) == 2  # the error and the burial; the success sends nothing
    error = next(e for e in events if "exception" in e)
    assert error["exception"]["values"][0]["type"] == "ValueError"
    assert error["tags"]["tubeworker.tube"] == "jobs"
    assert error["contexts"]["job"]["attempt"] == 1
    assert error["contexts"]["job"]["verdict"] == "retry"
    assert "payload" not in error["contexts"]["job"]  # not unless send_payload
    burial = next(e for e in events if "exception" not in e)
    assert burial["level"] == "warning"
    assert "not fixable" in burial["message"]


def test_given_middleware_config_then_it_is_built_from_entry_points_or_refused() -> None:
    with pytest.raises(ConfigError, match="no middleware 'nope'") as info:
        load_middleware(["nope"], {}, source="w.toml")
    assert info.value.key == "middleware.nope"
    with pytest.raises(ConfigError, match="cannot set up middleware 'sentry'"):
        load_middleware(["sentry"], {"sentry": {"no_such_option": 1}}, source="w.toml")
    try:
        (built,) = load_middleware(["sentry"], {"sentry": {"send_payload": True}}, source="w")
        assert isinstance(built, SentryMiddleware)
        assert built.send_payload
    finally:
        sentry_sdk.get_global_scope().set_client(None)
