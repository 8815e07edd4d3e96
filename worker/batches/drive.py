"""Run a batch exchange (ops.py) on a connection: a Trio client's, or a blocking one's."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tubeworker.batches.ops import Exchange, T
from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import Client

__all__ = ["drive", "drive_sync"]


async def drive(client: Client, exchange: Exchange[T]) -> T:
    """Send each round trip of ``exchange`` on ``client`` (one write), feed it the
    replies; its result."""
    try:
        commands = next(exchange)
        while True:
            commands = exchange.send(await client.pipeline(commands))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


def drive_sync(send: Callable[[Sequence[p.Command]], list[p.Reply]], exchange: Exchange[T]) -> T:
    """:func:`drive` for a blocking connection's ``send(commands) -> replies``."""
    try:
        commands = next(exchange)
        while True:
            commands = exchange.send(send(commands))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
