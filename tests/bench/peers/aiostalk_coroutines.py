"""Peer ``aiostalk``: C asyncio coroutines, each with its own aiostalk connection.

Each coroutine runs ``job = await client.reserve(); await handler(job); await
client.delete(job)`` until the process gets SIGTERM (or SIGINT); then every coroutine
finishes its current job and closes its connection, and the process prints one JSON line
(its own counts) and exits 0. It imports only aiostalk (which builds on greenstalk) and
the standard library: what an aiostalk user gets on the default asyncio event loop. The
harness times it from outside, exactly as it times the daemon (see tests/bench/daemon.py).

Reserves use ``reserve-with-timeout 1`` so a stop request is noticed within a second
while the tube is empty; while jobs are ready it is the same as ``reserve``.

    python tests/bench/peers/aiostalk_coroutines.py 127.0.0.1:11300 some-tube 200 --handler noop
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import aiostalk  # type: ignore[import-untyped]

_CONNECTS_AT_ONCE = 200  # beanstalkd's listen backlog is 1024: do not flood it


async def noop(job: Any) -> None:
    pass


async def sleep20(job: Any) -> None:
    await asyncio.sleep(0.02)


HANDLERS: dict[str, Callable[[Any], Awaitable[None]]] = {"noop": noop, "sleep20": sleep20}


async def consume(
    address: tuple[str, int],
    tube: str,
    handler: Callable[[Any], Awaitable[None]],
    stop: asyncio.Event,
    gate: asyncio.Semaphore,
    counts: dict[str, int],
) -> None:
    # encoding=None: bodies stay bytes (no decode in the loop).
    client = aiostalk.Client(address, encoding=None, watch=tube)
    try:
        async with gate:
            await client.connect()
    except Exception:
        stop.set()
        raise
    try:
        while not stop.is_set():
            try:
                job = await client.reserve(timeout=1)
            except aiostalk.TimedOutError:
                continue
            counts["reserved"] += 1
            await handler(job)
            await client.delete(job)
            counts["deleted"] += 1
    except Exception:
        stop.set()  # one failure stops the run: the harness sees the exit and fails loudly
        raise
    finally:
        await client.close()


async def amain(args: argparse.Namespace) -> int:
    host, _, port = args.address.rpartition(":")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    gate = asyncio.Semaphore(_CONNECTS_AT_ONCE)
    counts = {"reserved": 0, "deleted": 0}
    results = await asyncio.gather(
        *(
            consume((host, int(port)), args.tube, HANDLERS[args.handler], stop, gate, counts)
            for _ in range(args.coroutines)
        ),
        return_exceptions=True,
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    print(json.dumps({**counts, "errors": len(errors)}), flush=True)
    if errors:
        first = "".join(traceback.format_exception(errors[0]))
        print(f"{len(errors)} coroutines failed; first:\n{first}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address", help="host:port of beanstalkd")
    parser.add_argument("tube")
    parser.add_argument("coroutines", type=int)
    parser.add_argument("--handler", choices=sorted(HANDLERS), default="noop")
    return asyncio.run(amain(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
