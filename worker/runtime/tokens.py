"""Fleet-wide limits kept in beanstalkd itself: a tube of K token jobs per limit.

A job under a fleet limit runs only while its process holds one of the limit's tokens, a
job *reserved* from the token tube. beanstalkd's reservation semantics do the rest:

- **Concurrency** (``max_concurrent = K``): tube ``tubeworker.limit.NAME.running`` holds K
  tokens. A token is held (touched) while its job runs, then released at once. If its
  holder dies, its connection closes and beanstalkd makes the token ready again at once;
  if the holder's host vanishes silently, the token's TTR (``TOKEN_TTR``) returns it, and
  where beanstalkd fails to (docs/beanstalkd.md#b1), the others replace it (below).
- **Rate** (``rate = R``, ``burst = B``): tube ``tubeworker.limit.NAME.rate`` holds
  K = R * P tokens, P = max(1, round(B / R)) whole seconds (beanstalkd's delays are whole
  seconds). Each use releases the token with a delay of P seconds: each token serves at
  most one job per P seconds, so the fleet starts at most K jobs in any P seconds (about
  R per second, up to K at once after a quiet spell).

The token count converges to K: every process tops the tube up, one put at a time after a
fresh ``stats-tube`` (so processes starting together overshoot by at most one token each),
and a process that finds more than K tokens deletes the one it just used. Tokens of a
process killed while holding them are back at once (its connection closes), so the fleet
loses no capacity (docs/beanstalkd.md#close-returns-reserved-jobs). A holder whose host
vanished keeps them for ``TOKEN_TTR`` (docs/beanstalkd.md#ttr-rules), or, when beanstalkd
1.12 loses the expiry, until the next top-up by another process sees them reserved past
their TTR and puts replacements (``_stuck_tokens``); they are surplus once they come back.

Each broker owns one connection (only the connection that reserved a token may release
it) and polls the token tube with ``reserve-with-timeout 0`` while jobs wait for tokens.
Fleet tokens live on the first configured server.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass

import greenstalk
import structlog
import trio

from tubeworker.beanstalk.client import Address, Client, connect
from tubeworker.config import Config, LimitConfig
from tubeworker.errors import ConnectionLostError, ProtocolError

__all__ = ["TOKEN_TTR", "Ticket", "TokenBroker", "TokenTube", "fleet_brokers", "token_tubes"]

TOKEN_TTR = 10  # seconds a token stays reserved by a silent holder
_TOUCH_EVERY = TOKEN_TTR / 3
_TOP_UP_EVERY = 5.0  # seconds between checks that the tube holds its K tokens
_POLL_MIN, _POLL_MAX = 0.005, 0.1  # seconds between polls while jobs wait for a token
_TOKEN_BODY = b"tubeworker token"


@dataclass(frozen=True, slots=True)
class TokenTube:
    limit: str
    tube: str
    count: int  # K: tokens the tube holds
    cooldown: int  # seconds a used token stays delayed (rate), 0: ready at once
    held: bool  # held while the job runs (concurrency), else given back at admission


def token_tubes(settings: LimitConfig) -> tuple[TokenTube, ...]:
    """The token tubes of a fleet-wide limit, in the order a job takes their tokens: a
    running slot first, then the rate token, so that the job starts right after it (a rate
    token taken before a wait for a slot would let the starts bunch up)."""
    tubes = []
    if settings.max_concurrent is not None:
        tubes.append(
            TokenTube(
                settings.name,
                f"tubeworker.limit.{settings.name}.running",
                settings.max_concurrent,
                0,
                True,
            )
        )
    if settings.rate is not None:
        period = max(1, round(settings.bucket_size / settings.rate))
        count = max(1, round(settings.rate * period))
        tubes.append(
            TokenTube(settings.name, f"tubeworker.limit.{settings.name}.rate", count, period, False)
        )
    return tuple(tubes)


class Ticket:
    """A place in a broker's queue: ``token`` is set (and ``event``) when one is handed
    to it. A job keeps its ticket while it waits, however often it wakes to look around,
    so tokens go to waiting jobs first come, first served."""

    __slots__ = ("_broker", "event", "token")

    def __init__(self, broker: TokenBroker) -> None:
        self._broker = broker
        self.event = trio.Event()
        self.token: int | None = None

    def cancel(self) -> None:
        """Leave the queue; a token that came meanwhile goes back to the broker."""
        if self.token is not None:
            self._broker.give_back(self.token)
            self.token = None
        elif self in self._broker._waiters:
            self._broker._waiters.remove(self)


class TokenBroker:
    """Hands a limit's tokens to this process's jobs, from its own connection."""

    def __init__(
        self,
        tube: TokenTube,
        address: Address,
        connect: Callable[[Address], Awaitable[Client]],
        *,
        log: structlog.typing.FilteringBoundLogger | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.tube = tube
        self._address = address
        self._connect = connect
        self._log = (log or structlog.get_logger("tubeworker")).bind(token_tube=tube.tube)
        self._rng = rng or random.Random()
        self._waiters: deque[Ticket] = deque()
        self._held: dict[int, int] = {}  # token id → the connection generation it is on
        self._touched_at: dict[int, float] = {}
        self._returns: deque[tuple[int, int]] = deque()  # (token, generation) to release
        self._generation = 0
        self._wake = trio.Event()
        self._known_total: int | None = None  # tokens in the tube, less the stuck ones
        self._stuck = 0  # tokens stuck with a vanished holder, at the last top-up
        # Ids of the tokens this process has seen: the fleet's tokens pass through every
        # process in turn, so these are how a stuck one is found (see _stuck_tokens).
        self._seen: OrderedDict[int, None] = OrderedDict()
        self.connected = False
        #: tokens taken, and times a job found none ready.
        self.taken = 0
        self.waited = 0

    # ---- for jobs

    def ticket(self) -> Ticket:
        """Join the queue for a token; wait on ``ticket.event``, and ``cancel()`` it if the
        job stops waiting."""
        ticket = Ticket(self)
        self._waiters.append(ticket)
        self._wake.set()
        return ticket

    async def acquire(self) -> int:
        """A token (its job id); waits until one is ready. Cancellation-safe: a token
        that arrives for a cancelled waiter is given back."""
        ticket = self.ticket()
        try:
            await ticket.event.wait()
        except BaseException:
            ticket.cancel()
            raise
        assert ticket.token is not None
        return ticket.token

    def give_back(self, token: int) -> None:
        """The job is done with the token (a rate token: admitted): release it."""
        generation = self._held.pop(token, None)
        self._touched_at.pop(token, None)
        if generation is not None and generation == self._generation:
            self._returns.append((token, generation))
            self._wake.set()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def holding(self) -> int:
        return len(self._held)

    # ---- the broker's task

    async def run(self) -> None:
        """Serve tokens until cancelled, reconnecting after a lost connection (tokens held
        on it are beanstalkd's again: their jobs go on without them)."""
        delay = 0.1
        while True:
            client: Client | None = None
            try:
                client = await self._connect(self._address)
                await client.use(self.tube.tube)
                await client.watch(self.tube.tube)
                await client.ignore("default")
                self.connected = True
                delay = 0.1
                await self._serve(client)
            except (ConnectionLostError, ProtocolError, greenstalk.Error, OSError) as exc:
                self._log.warning("token connection lost", error=str(exc), retry_in=delay)
            finally:
                self.connected = False
                self._generation += 1
                self._held.clear()
                self._touched_at.clear()
                self._returns.clear()
                if client is not None:
                    with trio.CancelScope(shield=True):
                        await client.aclose()
            await trio.sleep(delay * (0.5 + self._rng.random()))
            delay = min(delay * 2, 10.0)

    async def _serve(self, client: Client) -> None:
        await self._top_up(client)
        next_top_up = trio.current_time() + _TOP_UP_EVERY
        poll = _POLL_MIN
        while True:
            now = trio.current_time()
            while self._returns:
                token, generation = self._returns.popleft()
                if generation == self._generation:
                    await self._return(client, token)
            for token, at in list(self._touched_at.items()):
                if now - at >= _TOUCH_EVERY:
                    await self._touch(client, token)
            if now >= next_top_up:
                await self._top_up(client)
                next_top_up = now + _TOP_UP_EVERY
            wait_until = min(
                next_top_up, min(self._touched_at.values(), default=math.inf) + _TOUCH_EVERY
            )
            self._waiters = deque(w for w in self._waiters if not w.event.is_set())
            if self._waiters:
                taken = await self._take(client)
                if taken is not None:
                    self._hand_out(taken)
                    poll = _POLL_MIN
                    continue
                self.waited += 1
                wait_until = min(wait_until, trio.current_time() + poll)
                poll = min(poll * 2, _POLL_MAX)
            if not self._returns:
                self._wake = trio.Event()
                with trio.move_on_at(wait_until):
                    await self._wake.wait()

    async def _take(self, client: Client) -> int | None:
        try:
            reserved = await client.reserve(timeout=0)
        except greenstalk.TimedOutError:
            return None
        except greenstalk.DeadlineSoonError:
            for token in list(self._touched_at):
                await self._touch(client, token)
            return None
        return reserved.id

    def _hand_out(self, token: int) -> None:
        self.taken += 1
        self._held[token] = self._generation
        self._seen[token] = None
        self._seen.move_to_end(token)
        while len(self._seen) > 4 * self.tube.count:
            self._seen.popitem(last=False)
        waiter = self._waiters.popleft()
        waiter.token = token
        waiter.event.set()
        if self.tube.held:
            self._touched_at[token] = trio.current_time()
        else:
            self.give_back(token)  # a rate token: its use is the admission itself

    async def _return(self, client: Client, token: int) -> None:
        """Release a used token (delayed for a rate), or delete it if there are too many."""
        if self._known_total is not None and self._known_total > self.tube.count:
            # Fresh (other processes trim too), stuck tokens not counted: they have
            # replacements, and are surplus only once they come back.
            total = await self._total(client) - self._stuck
            if total > self.tube.count:
                try:
                    await client.delete(token)
                    self._known_total = total - 1
                    self._log.info("surplus token deleted", tokens=total - 1)
                    return
                except greenstalk.NotFoundError:
                    return
        # NOT_FOUND: its TTR ran out while it was ours; it is ready already.
        with suppress(greenstalk.NotFoundError):
            await client.release(token, priority=0, delay=self.tube.cooldown)

    async def _touch(self, client: Client, token: int) -> None:
        try:
            await client.touch(token)
            self._touched_at[token] = trio.current_time()
        except greenstalk.NotFoundError:
            # beanstalkd took it back (its TTR ran out): the job runs on without it.
            self._touched_at.pop(token, None)
            self._held.pop(token, None)

    async def _total(self, client: Client) -> int:
        try:
            stats = await client.stats_tube(self.tube.tube)
        except greenstalk.NotFoundError:
            return 0
        return (
            stats.current_jobs_ready
            + stats.current_jobs_reserved
            + stats.current_jobs_delayed
            + stats.current_jobs_buried
        )

    async def _top_up(self, client: Client) -> None:
        """Put tokens until the tube holds K, one at a time after a fresh count; tokens
        stuck with a vanished holder do not count (they are replaced)."""
        stuck = self._stuck = await self._stuck_tokens(client)
        put = 0
        while True:
            total = await self._total(client) - stuck
            self._known_total = total
            if total >= self.tube.count:
                break
            await client.put(_TOKEN_BODY, priority=0, ttr=TOKEN_TTR)
            put += 1
        if put:
            self._log.info("tokens put", put=put, tokens=self.tube.count, stuck=stuck)

    async def _stuck_tokens(self, client: Client) -> int:
        """Tokens reserved past their TTR: a holder whose host vanished without closing its
        connection, whose tokens beanstalkd 1.12 may never take back (docs/beanstalkd.md#b1)
        until its TCP keepalive gives up, hours later. A live holder touches its tokens
        well inside the TTR, so theirs never go below zero."""
        stuck = 0
        for token in list(self._seen):
            if token in self._held:
                continue
            try:
                stats = await client.stats_job(token)
            except greenstalk.NotFoundError:
                del self._seen[token]  # deleted as surplus
                continue
            if stats.state == "reserved" and stats.time_left < 0:
                stuck += 1
        return stuck


def fleet_brokers(config: Config) -> dict[str, tuple[TokenBroker, ...]]:
    """A broker per token tube of each fleet-wide limit, on the first configured server."""
    address = config.servers[0]

    async def connect_tokens(address: Address) -> Client:
        return await connect(
            address,
            connect_timeout=config.connect_timeout,
            reply_timeout=config.reply_timeout,
            keepalive=config.keepalive,
        )

    return {
        limit.name: tuple(TokenBroker(tube, address, connect_tokens) for tube in token_tubes(limit))
        for limit in config.limits
        if limit.fleet
    }
