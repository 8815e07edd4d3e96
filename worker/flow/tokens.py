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

**Several servers.** The K tokens are spread over the daemon's servers (``servers``, in
sorted order, so every daemon that lists the same servers agrees), each holding its share
(:func:`token_shares`). A job takes a token from whichever server hands one first
(:class:`TokenGroup`). While a server is down its share is out of reach: the fleet runs
with fewer tokens, never more, and the limit says it is degraded (``/status``, the metrics,
the log); jobs of the servers that are up keep running under the remaining share. When the
server returns, its tokens are there again (with a binlog; without, the daemons put them
back at their next top-up). A limit whose every token server is down holds its jobs until
one returns (they are deferred past ``defer_after`` like any full limit). So every daemon
sharing a fleet limit must list the same servers: ``tubeworker check`` shows the shares.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, replace

import greenstalk
import structlog
import trio

from tubeworker.beanstalk.client import Address, Client, connect
from tubeworker.config import Config, LimitConfig
from tubeworker.errors import ConnectionLostError, ProtocolError

__all__ = [
    "TOKEN_TTR",
    "FleetTokens",
    "Ticket",
    "TokenBroker",
    "TokenGroup",
    "TokenTube",
    "fleet_tokens",
    "token_shares",
    "token_tubes",
]

log = structlog.get_logger("tubeworker")

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
    """A place in the queues of a group's brokers: ``token`` (and ``broker``, the one that
    gave it) is set, and ``event``, when the first of them hands one to it. A job keeps
    its ticket while it waits, however often it wakes to look around, so tokens go to
    waiting jobs first come, first served."""

    __slots__ = ("_brokers", "broker", "event", "token")

    def __init__(self, brokers: tuple[TokenBroker, ...]) -> None:
        self._brokers = brokers
        self.event = trio.Event()
        self.token: int | None = None
        self.broker: TokenBroker | None = None

    def offer(self, broker: TokenBroker, token: int) -> bool:
        """A broker hands ``token`` over; False if another broker was first."""
        if self.event.is_set():
            return False
        self.token, self.broker = token, broker
        self.event.set()
        return True

    def cancel(self) -> None:
        """Leave the queues; a token that came meanwhile goes back to its broker."""
        if self.token is not None and self.broker is not None:
            self.broker.give_back(self.token)
            self.token = None
        for broker in self._brokers:
            broker.forget(self)


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
        self.address = address
        self._connect = connect
        self._log = (log or structlog.get_logger("tubeworker")).bind(
            token_tube=tube.tube, server=str(address)
        )
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
        self.tried = False  # connected, or failed to, once
        #: Called when ``connected`` changes (the group reports its limit's health).
        self.on_connection: Callable[[], None] | None = None
        #: tokens taken, and times a job found none ready.
        self.taken = 0
        self.waited = 0

    # ---- for jobs

    def join(self, ticket: Ticket) -> None:
        """Queue ``ticket`` for this broker's next token."""
        self._waiters.append(ticket)
        self._wake.set()

    def forget(self, ticket: Ticket) -> None:
        if ticket in self._waiters:
            self._waiters.remove(ticket)

    async def acquire(self) -> int:
        """A token (its job id); waits until one is ready. Cancellation-safe: a token
        that arrives for a cancelled waiter is given back."""
        ticket = Ticket((self,))
        self.join(ticket)
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
        """Jobs waiting for a token (those another server served are skipped)."""
        return sum(1 for waiter in self._waiters if not waiter.event.is_set())

    @property
    def holding(self) -> int:
        return len(self._held)

    def _set_connected(self, connected: bool) -> None:
        changed = connected != self.connected or not self.tried
        self.connected, self.tried = connected, True
        if changed and self.on_connection is not None:
            self.on_connection()

    # ---- the broker's task

    async def run(self) -> None:
        """Serve tokens until cancelled, reconnecting after a lost connection (tokens held
        on it are beanstalkd's again: their jobs go on without them)."""
        delay = 0.1
        failures = 0
        while True:
            client: Client | None = None
            try:
                client = await self._connect(self.address)
                await client.use(self.tube.tube)
                await client.watch(self.tube.tube)
                await client.ignore("default")
                self._set_connected(True)
                delay, failures = 0.1, 0
                await self._serve(client)
            except (ConnectionLostError, ProtocolError, greenstalk.Error, OSError) as exc:
                failures += 1
                # Said once; the group says what it means for the limit (degraded).
                say = self._log.warning if failures == 1 else self._log.debug
                say("token connection lost", error=str(exc), retry_in=round(delay, 2))
            finally:
                self._set_connected(False)
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
        self._held[token] = self._generation
        self._seen[token] = None
        self._seen.move_to_end(token)
        while len(self._seen) > 4 * self.tube.count:
            self._seen.popitem(last=False)
        taken = False
        while self._waiters and not taken:
            taken = self._waiters.popleft().offer(self, token)
        if not taken:  # another server's broker served them first: straight back
            self.give_back(token)
            return
        self.taken += 1
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


def token_shares(count: int, servers: int) -> list[int]:
    """K tokens over S servers, as evenly as possible, the first servers taking one more."""
    return [count // servers + (1 if i < count % servers else 0) for i in range(servers)]


@dataclass(frozen=True, slots=True)
class TokenServer:
    """One server's part of a token group, for reports."""

    server: str
    share: int
    connected: bool


@dataclass(frozen=True, slots=True)
class FleetTokens:
    """A fleet limit's tokens of one kind, as ``/status`` and the metrics show them."""

    limit: str
    tube: str
    tokens: int  # K
    reachable: int  # on servers this process is connected to
    servers: tuple[TokenServer, ...]

    @property
    def degraded(self) -> str | None:
        """Why fewer than K tokens are in reach, or None."""
        down = [s for s in self.servers if not s.connected]
        if not down:
            return None
        names = ", ".join(f"{s.server} ({s.share} tokens)" for s in down)
        return f"server down: {names}; {self.reachable} of {self.tokens} tokens in reach"


class TokenGroup:
    """The tokens of one token tube across the servers: a job takes one from whichever
    broker hands it first (see the module docstring)."""

    def __init__(self, tube: TokenTube, brokers: tuple[TokenBroker, ...]) -> None:
        self.tube = tube
        self.brokers = brokers
        self._told: str | None = None  # the degradation last said
        self._started = False
        for broker in brokers:
            broker.on_connection = self._connection_changed

    def ticket(self) -> Ticket:
        """Join every server's queue for a token; wait on ``ticket.event``, and
        ``cancel()`` it when the job stops waiting."""
        ticket = Ticket(self.brokers)
        for broker in self.brokers:
            broker.join(ticket)
        return ticket

    def statistics(self) -> FleetTokens:
        servers = tuple(
            TokenServer(str(b.address), b.tube.count, b.connected) for b in self.brokers
        )
        return FleetTokens(
            self.tube.limit, self.tube.tube, self.tube.count, self.reachable, servers
        )

    @property
    def reachable(self) -> int:
        """Tokens on servers this process is connected to now (K when all are up)."""
        return sum(b.tube.count for b in self.brokers if b.connected)

    def _connection_changed(self) -> None:
        if not self._started:  # until every server has been tried once, nothing is lost
            if any(not b.tried for b in self.brokers):
                return
            self._started = True
        why = self.statistics().degraded
        if why == self._told:
            return
        if why is not None:
            log.warning("fleet limit degraded", limit=self.tube.limit, tube=self.tube.tube, why=why)
        else:
            log.info("fleet limit restored", limit=self.tube.limit, tube=self.tube.tube)
        self._told = why


def fleet_tokens(config: Config) -> dict[str, tuple[TokenGroup, ...]]:
    """Per fleet-wide limit, a token group per token tube, its tokens spread over the
    servers (a broker per server holding a share)."""
    servers = sorted(config.servers, key=str)

    async def connect_tokens(address: Address) -> Client:
        return await connect(
            address,
            connect_timeout=config.connect_timeout,
            reply_timeout=config.reply_timeout,
            keepalive=config.keepalive,
        )

    groups: dict[str, tuple[TokenGroup, ...]] = {}
    for limit in config.limits:
        if not limit.fleet:
            continue
        found = []
        for tube in token_tubes(limit):
            shares = token_shares(tube.count, len(servers))
            brokers = tuple(
                TokenBroker(replace(tube, count=share), address, connect_tokens)
                for address, share in zip(servers, shares, strict=True)
                if share
            )
            found.append(TokenGroup(tube, brokers))
        groups[limit.name] = tuple(found)
    return groups
