"""Unique-key locks against a real beanstalkd: many processes' lock services (one
connection each) racing for the same keys never hold one key twice, and a dead holder's
key is free at once."""

from __future__ import annotations

import random

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from tests.support.beanstalkd import BeanstalkdProcess
from tubeworker.beanstalk.client import Address
from tubeworker.beanstalk.protocol import validate_tube_name
from tubeworker.flow.unique import UniqueLocks, key_path_value, unique_tube
from tubeworker.job import handler


async def test_given_racing_holders_then_a_key_is_never_held_twice(
    beanstalkd: BeanstalkdProcess,
) -> None:
    address = Address(beanstalkd.host, beanstalkd.port)
    services = [UniqueLocks(address) for _ in range(6)]
    holding: dict[str, int] = {"a": 0, "b": 0}
    most = {"a": 0, "b": 0}
    runs = 0

    async def worker(locks: UniqueLocks, seed: int) -> None:
        nonlocal runs
        rng = random.Random(seed)
        for _ in range(25):
            key = rng.choice("ab")
            lock = await locks.acquire("t", key, patience=30, on_lost=lambda why: None)
            assert lock is not None
            holding[key] += 1
            most[key] = max(most[key], holding[key])
            await trio.sleep(rng.uniform(0, 0.005))
            holding[key] -= 1
            runs += 1
            locks.release(lock)

    async with trio.open_nursery() as nursery:
        for locks in services:
            nursery.start_soon(locks.run)
        async with trio.open_nursery() as workers:
            for seed, locks in enumerate(services):
                for n in range(3):  # several jobs of one process at once, too
                    workers.start_soon(worker, locks, seed * 10 + n)
        nursery.cancel_scope.cancel()
    for locks in services:
        await locks.aclose()
    assert runs == 6 * 3 * 25
    assert most == {"a": 1, "b": 1}
    assert sum(locks.contended for locks in services) > 0  # they did race


async def test_given_a_holder_whose_connection_dies_then_its_key_is_free_at_once(
    beanstalkd: BeanstalkdProcess,
) -> None:
    address = Address(beanstalkd.host, beanstalkd.port)
    first, second = UniqueLocks(address), UniqueLocks(address)
    lost: list[str] = []
    held = await first.acquire("t", "k", patience=1, on_lost=lost.append)
    assert held is not None
    assert await second.acquire("t", "k", patience=0.2, on_lost=lost.append) is None
    assert first._client is not None
    await first._client.aclose()  # the holder's process dies: its connection closes
    with trio.fail_after(2):
        taken = await second.acquire("t", "k", patience=1, on_lost=lost.append)
    assert taken is not None
    assert lost == []
    await second.aclose()


async def test_given_the_lock_connection_lost_then_its_jobs_are_told(
    beanstalkd: BeanstalkdProcess,
) -> None:
    locks = UniqueLocks(Address(beanstalkd.host, beanstalkd.port))
    lost: list[str] = []
    assert await locks.acquire("t", "k", patience=1, on_lost=lost.append) is not None
    await locks._lost("the test cut it")
    assert len(lost) == 1
    assert "unique key 'k' lost with the lock server connection" in lost[0]


async def test_given_an_unreachable_lock_server_then_no_lock_after_patience() -> None:
    locks = UniqueLocks(Address("127.0.0.1", 1), connect_timeout=0.2)
    with trio.fail_after(5):
        assert await locks.acquire("t", "k", patience=0.3, on_lost=lambda why: None) is None


@given(st.text(), st.text())
def test_given_any_task_and_key_then_the_tube_name_is_valid(task: str, key: str) -> None:
    validate_tube_name(unique_tube(task, key))
    assert unique_tube(task, key) != unique_tube(task + "x", key)


def test_given_payload_paths_then_keys_are_read_from_dicts_and_models() -> None:
    from pydantic import BaseModel

    class Order(BaseModel):
        order_id: int
        customer: dict[str, str]

    assert key_path_value({"order_id": 42}, "payload.order_id") == "42"
    assert key_path_value({"a": {"b": "x"}}, "payload.a.b") == "x"
    assert key_path_value({"a": 1}, "payload.missing") is None
    assert key_path_value(["not", "a", "dict"], "payload.a") is None
    order = Order(order_id=7, customer={"id": "c1"})
    assert key_path_value(order, "payload.order_id") == "7"
    assert key_path_value(order, "payload.customer.id") == "c1"


@pytest.mark.parametrize("unique", ["order_id", "", 42])
def test_given_a_unique_that_is_no_path_then_the_declaration_fails(unique: object) -> None:
    with pytest.raises(ValueError, match="unique must be"):
        handler(unique=unique)  # type: ignore[arg-type]
