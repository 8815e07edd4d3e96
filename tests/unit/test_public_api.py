"""The handler authors' API: what ``tubeworker`` exports, and how Job, handler and Retry behave."""

from __future__ import annotations

import importlib
import importlib.metadata
import pickle

import pytest
import structlog.testing

import tubeworker
from tubeworker import Bury, Job, Retry, handler
from tubeworker.job import HandlerSpec, spec_of


def make_job(**overrides: object) -> Job:
    fields: dict[str, object] = {
        "id": 42,
        "tube": "emails",
        "body": b'{"to": "a@example.com", "n": 3}',
        "priority": 7,
        "ttr": 60,
        "attempt": 2,
        "max_attempts": 5,
        "task": "mail.send",
        "payload": {"to": "a@example.com"},
    }
    fields.update(overrides)
    return Job(**fields)  # type: ignore[arg-type]


class FakeServices:
    """The lane's side of a job, recorded."""

    def __init__(self) -> None:
        self.puts: list[tuple[bytes, str, int, int, int]] = []
        self.touches = 0

    async def touch(self) -> None:
        self.touches += 1

    async def put(self, body: bytes, *, tube: str, priority: int, delay: int, ttr: int) -> int:
        self.puts.append((body, tube, priority, delay, ttr))
        return 99

    @property
    def http(self) -> str:
        return "the shared client"


# --------------------------------------------------------------------------- exports


def test_given_package_when_inspected_then_all_is_exactly_the_public_api() -> None:
    assert sorted(tubeworker.__all__) == [
        "Bury",
        "Duplicate",
        "Job",
        "Middleware",
        "PayloadInvalid",
        "Retry",
        "Verdict",
        "__version__",
        "handler",
        "idempotent",
        "parse_retry_after",
    ]


@pytest.mark.parametrize(
    "name",
    [
        "Bury",
        "Job",
        "Middleware",
        "Retry",
        "Verdict",
        "__version__",
        "handler",
        "parse_retry_after",
    ],
)
def test_given_public_name_when_imported_from_the_root_then_available(name: str) -> None:
    module = importlib.import_module("tubeworker")
    assert getattr(module, name) is not None


def test_given_version_when_read_then_matches_the_distribution() -> None:
    assert isinstance(tubeworker.__version__, str)
    assert tubeworker.__version__ == importlib.metadata.version("tubeworker")


def test_given_outcomes_when_inspected_then_they_are_exceptions_for_raising() -> None:
    assert issubclass(Retry, Exception)
    assert issubclass(Bury, Exception)


# --------------------------------------------------------------------------- Job


def test_given_json_body_when_job_json_then_parsed() -> None:
    assert make_job().json() == {"to": "a@example.com", "n": 3}


def test_given_non_json_body_when_job_json_then_value_error() -> None:
    with pytest.raises(ValueError, match="Expecting value"):
        make_job(body=b"not json").json()


def test_job_data_is_the_payload_or_for_a_bound_pool_the_body_as_json() -> None:
    envelope = Job(
        id=1, tube="t", body=b"{}", priority=0, ttr=60, attempt=1, max_attempts=3,
        task="send", payload={"n": 1},
    )  # fmt: skip
    assert envelope.data() == {"n": 1}
    bound = make_job(task=None, payload=None)
    assert bound.data() == {"to": "a@example.com", "n": 3}  # no envelope: the body
    with pytest.raises(ValueError, match="Expecting value"):
        make_job(body=b"not json", task=None, payload=None).data()


def test_given_job_when_repr_then_names_id_tube_task_attempt() -> None:
    text = repr(make_job())
    assert "42" in text
    assert "'emails'" in text
    assert "'mail.send'" in text
    assert "attempt=2" in text


async def test_given_job_without_services_when_put_then_runtime_error_naming_compute() -> None:
    with pytest.raises(RuntimeError, match=r"job\.put\(\).*compute"):
        await make_job().put(b"follow-up")


async def test_given_job_without_services_when_touch_then_runtime_error() -> None:
    with pytest.raises(RuntimeError, match=r"job\.touch\(\)"):
        await make_job().touch()


def test_given_job_without_services_when_http_then_runtime_error() -> None:
    with pytest.raises(RuntimeError, match=r"job\.http\(\)"):
        _ = make_job().http


async def test_given_job_with_services_when_put_then_body_encoded_and_tube_defaulted() -> None:
    services = FakeServices()
    job = make_job(services=services)
    assert await job.put({"a": 1}) == 99
    await job.put("text", tube="other", priority=1, delay=2, ttr=3)
    await job.put(b"raw")
    await job.touch()
    assert services.puts == [
        (b'{"a":1}', "emails", 1024, 0, 60),
        (b"text", "other", 1, 2, 3),
        (b"raw", "emails", 1024, 0, 60),
    ]
    assert services.touches == 1
    assert job.http == "the shared client"


def test_given_job_with_services_when_pickled_then_copy_has_data_but_no_services() -> None:
    # Compute-profile handlers get the job in another process.
    job = make_job(services=FakeServices())
    with structlog.testing.capture_logs() as logs:
        copy = pickle.loads(pickle.dumps(job))
        copy.log.info("unpickled")
    assert isinstance(copy, Job)
    assert (copy.id, copy.tube, copy.body, copy.payload, copy.attempt) == (
        42,
        "emails",
        b'{"to": "a@example.com", "n": 3}',
        {"to": "a@example.com"},
        2,
    )
    assert (copy.priority, copy.ttr, copy.max_attempts, copy.task) == (7, 60, 5, "mail.send")
    assert copy._services is None
    with pytest.raises(RuntimeError, match="compute"):
        _ = copy.http
    # The copy gets a fresh logger bound to the job.
    assert logs == [
        {
            "job_id": 42,
            "tube": "emails",
            "task": "mail.send",
            "event": "unpickled",
            "log_level": "info",
        }
    ]


def test_given_job_when_pickled_then_the_services_object_is_not_in_the_bytes() -> None:
    class Unpicklable(FakeServices):
        def __reduce__(self) -> object:
            raise AssertionError("services must not be pickled")

    pickle.dumps(make_job(services=Unpicklable()))


# --------------------------------------------------------------------------- handler / Retry


def test_given_decorator_options_when_applied_then_recorded_in_the_spec() -> None:
    @handler("mail.send", apis=["smtp"], timeout=30, max_attempts=4, backoff=(1, 60))
    async def send(job: Job) -> None:
        pass

    spec = spec_of(send)
    assert spec == HandlerSpec(
        func=send,
        name="mail.send",
        apis=("smtp",),
        timeout=30,
        max_attempts=4,
        backoff_base=1,
        backoff_cap=60,
    )
    assert spec.is_async


def test_given_plain_function_when_spec_read_then_defaults() -> None:
    def plain(job: Job) -> None:
        pass

    spec = spec_of(plain)
    assert (spec.func, spec.name, spec.timeout, spec.max_attempts) == (plain, None, None, None)
    assert not spec.is_async


@pytest.mark.parametrize("timeout", [0, -1, -0.5])
def test_given_non_positive_timeout_when_decorating_then_value_error(timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout"):
        handler(timeout=timeout)


@pytest.mark.parametrize("max_attempts", [0, -3])
def test_given_max_attempts_below_one_when_decorating_then_value_error(
    max_attempts: int,
) -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        handler(max_attempts=max_attempts)


def test_given_smallest_valid_options_when_decorating_then_accepted() -> None:
    decorate = handler(timeout=0.001, max_attempts=1)
    assert callable(decorate)


def test_given_non_callable_when_decorated_then_type_error() -> None:
    with pytest.raises(TypeError):
        handler()(42)  # type: ignore[type-var]


def test_given_negative_retry_delay_when_raised_then_value_error() -> None:
    with pytest.raises(ValueError, match="delay"):
        Retry(delay=-1)


def test_given_retry_options_when_built_then_kept() -> None:
    assert Retry().delay is None
    retry = Retry(delay=0, reason="rate limited")
    assert (retry.delay, retry.reason, str(retry)) == (0, "rate limited", "rate limited")


def test_given_bury_reason_when_built_then_kept() -> None:
    bury = Bury("bad payload")
    assert (bury.reason, str(bury)) == ("bad payload", "bad payload")
