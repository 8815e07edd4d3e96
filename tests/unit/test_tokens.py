"""The token broker's bookkeeping against a scripted server: topping up to K, a token stuck
with a vanished holder replaced, and surplus tokens deleted only when really surplus."""

from __future__ import annotations

from typing import Any, cast

import greenstalk

from tubeworker.beanstalk.client import Address, Client
from tubeworker.config import Config, LimitConfig
from tubeworker.flow.tokens import (
    TOKEN_TTR,
    TokenBroker,
    TokenGroup,
    fleet_tokens,
    token_shares,
    token_tubes,
)


class ScriptedTokens:
    """The token tube as the broker sees it through its client: jobs by id and state."""

    def __init__(self) -> None:
        self.jobs: dict[int, tuple[str, int]] = {}  # id -> (state, time-left)
        self.next_id = 1
        self.deleted: list[int] = []
        self.released: list[tuple[int, int]] = []

    async def stats_tube(self, tube: str) -> Any:
        counts = {state: 0 for state in ("ready", "reserved", "delayed", "buried")}
        for state, _left in self.jobs.values():
            counts[state] += 1
        return type("Stats", (), {f"current_jobs_{k}": v for k, v in counts.items()})()

    async def put(self, body: bytes, *, priority: int, ttr: int) -> int:
        assert ttr == TOKEN_TTR
        job_id, self.next_id = self.next_id, self.next_id + 1
        self.jobs[job_id] = ("ready", 0)
        return job_id

    async def stats_job(self, job_id: int) -> Any:
        if job_id not in self.jobs:
            raise greenstalk.NotFoundError("NOT_FOUND")
        state, left = self.jobs[job_id]
        return type("JobStats", (), {"state": state, "time_left": left})()

    async def delete(self, job_id: int) -> None:
        self.deleted.append(job_id)
        del self.jobs[job_id]

    async def release(self, job_id: int, *, priority: int, delay: int) -> None:
        self.released.append((job_id, delay))
        self.jobs[job_id] = ("delayed" if delay else "ready", 0)


def broker_for(count: int) -> tuple[TokenBroker, ScriptedTokens, Client]:
    (running,) = token_tubes(LimitConfig("partner", max_concurrent=count, fleet=True))
    server = ScriptedTokens()

    async def never(address: Address) -> Client:
        raise AssertionError("the tests call the broker's steps directly")

    return TokenBroker(running, Address(), never), server, cast(Client, server)


async def test_given_an_empty_tube_then_it_is_topped_up_to_k() -> None:
    broker, server, client = broker_for(3)
    await broker._top_up(client)
    assert [state for state, _ in server.jobs.values()] == ["ready"] * 3
    await broker._top_up(client)  # already full: nothing more
    assert len(server.jobs) == 3


async def test_given_a_token_stuck_with_a_vanished_holder_then_it_is_replaced() -> None:
    broker, server, client = broker_for(2)
    await broker._top_up(client)
    for token in list(server.jobs):
        broker._seen[token] = None  # this process has used both
    stuck = next(iter(server.jobs))
    server.jobs[stuck] = ("reserved", -40)  # past its TTR, never taken back (B1)
    await broker._top_up(client)
    assert len(server.jobs) == 3  # a replacement: 2 usable
    # A token used while the stuck one is still out is not surplus: it is released.
    usable = next(t for t, (state, _) in server.jobs.items() if state == "ready")
    broker._held[usable] = broker._generation
    await broker._return(client, usable)
    assert server.deleted == []
    assert server.released == [(usable, 0)]


async def test_given_the_stuck_token_back_then_one_token_is_surplus_and_deleted() -> None:
    broker, server, client = broker_for(2)
    await broker._top_up(client)
    for token in list(server.jobs):
        broker._seen[token] = None
    stuck = next(iter(server.jobs))
    server.jobs[stuck] = ("reserved", -40)
    await broker._top_up(client)
    server.jobs[stuck] = ("ready", 0)  # its holder's connection finally dropped
    await broker._top_up(client)  # no longer stuck: 3 tokens for K = 2
    used = next(t for t in server.jobs if t != stuck)
    await broker._return(client, used)
    assert server.deleted == [used]
    assert len(server.jobs) == 2


async def test_given_healthy_holders_then_their_tokens_are_not_stuck() -> None:
    broker, server, client = broker_for(2)
    await broker._top_up(client)
    for token in list(server.jobs):
        broker._seen[token] = None
        server.jobs[token] = ("reserved", 6)  # held and touched by another process
    assert await broker._stuck_tokens(client) == 0
    await broker._top_up(client)
    assert len(server.jobs) == 2


# --------------------------------------------------------------------------- several servers


def test_tokens_are_shared_out_over_the_servers() -> None:
    assert token_shares(5, 2) == [3, 2]
    assert token_shares(4, 2) == [2, 2]
    assert token_shares(1, 3) == [1, 0, 0]
    assert token_shares(7, 1) == [7]
    assert sum(token_shares(97, 5)) == 97


async def test_a_fleet_limit_puts_a_share_on_each_server_in_sorted_order() -> None:
    limit = LimitConfig("partner", rate=20, burst=5, max_concurrent=5, fleet=True)
    config = Config(
        pools=(),
        servers=(Address("10.0.0.2", 11300), Address("10.0.0.1", 11300)),
        limits=(limit,),
    )
    running, rate = fleet_tokens(config)["partner"]
    assert [(str(b.address), b.tube.count) for b in running.brokers] == [
        ("10.0.0.1:11300", 3),
        ("10.0.0.2:11300", 2),
    ]
    assert running.tube.count == 5  # the whole limit, for reports
    assert [b.tube.count for b in rate.brokers] == [10, 10]  # rate 20 x P 1 s
    assert running.reachable == 0  # nothing connected yet
    running.brokers[1].connected = True
    assert running.reachable == 2  # one server down: fewer tokens, never more


async def test_a_waiting_job_takes_the_first_token_of_any_server_and_the_other_goes_back() -> None:
    (tube,) = token_tubes(LimitConfig("partner", max_concurrent=2, fleet=True))

    async def never(address: Address) -> Client:
        raise AssertionError("not connected in this test")

    first, second = (TokenBroker(tube, Address(f"10.0.0.{n}"), never) for n in (1, 2))
    group = TokenGroup(tube, (first, second))
    ticket = group.ticket()
    later = group.ticket()
    first._hand_out(5)
    assert (ticket.token, ticket.broker) == (5, first)
    second._hand_out(9)  # the first ticket is served: the next one in line gets it
    assert (later.token, later.broker) == (9, second)
    third = group.ticket()
    ticket.cancel()  # a job that leaves with its token gives it back to its own server
    assert first._returns[-1][0] == 5
    third.cancel()  # left before any token came: out of every queue
    assert first.waiting == second.waiting == 0
    first._hand_out(6)  # nobody waits any more: the token goes straight back
    assert first._returns[-1][0] == 6
