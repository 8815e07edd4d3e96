"""The daemon's side of burial records (``tubeworker.burials``): every burial beanstalkd
confirms is written to its companion tube by one task per process, on its own connection
per server, off the lanes' path. A record that cannot be written is logged and dropped:
the job itself is buried either way."""

from __future__ import annotations

import structlog
import trio

from tubeworker.beanstalk.client import Address, Client, connect
from tubeworker.burials import BurialRecord, write_record
from tubeworker.config import Config
from tubeworker.errors import ConnectionLostError, ProtocolError

__all__ = ["BurialQueue", "run_burial_recorder"]

log = structlog.get_logger("tubeworker")

_QUEUE = 1000  # records waiting to be written; past it they are dropped (and said so)


class BurialQueue:
    """Where lanes leave burial records (never waits: a full queue drops, and says so)."""

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[tuple[Address, BurialRecord]](_QUEUE)
        self.dropped = 0

    def add(self, address: Address, record: BurialRecord) -> None:
        try:
            self.send.send_nowait((address, record))
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self.dropped += 1


async def run_burial_recorder(config: Config, queue: BurialQueue) -> None:
    clients: dict[Address, Client] = {}
    try:
        async for address, record in queue.receive:
            try:
                client = clients.get(address)
                if client is None or not client.is_usable:
                    client = clients[address] = await connect(
                        address,
                        connect_timeout=config.connect_timeout,
                        reply_timeout=config.reply_timeout,
                    )
                with trio.fail_after(config.reply_timeout * 2):
                    await write_record(client, record)
            except (ConnectionLostError, ProtocolError, trio.TooSlowError, OSError) as exc:
                log.warning("burial reason not recorded", job_id=record.job_id, error=str(exc))
    finally:
        with trio.CancelScope(shield=True):
            for client in clients.values():
                await client.aclose()
