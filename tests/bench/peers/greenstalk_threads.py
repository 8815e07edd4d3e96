"""Peer ``greenstalk-threads``: T threads, each with its own greenstalk connection.

Each thread runs the classic loop ``job = client.reserve(); handler(job);
client.delete(job)`` until the process gets SIGTERM (or SIGINT), then the threads finish
their current job, close their connections, and the process prints one JSON line (its
own counts) and exits 0. It imports only greenstalk and the standard library, so the
figure is what a greenstalk user gets. The harness times it from outside, exactly as it
times the daemon (see tests/bench/daemon.py).

Reserves use ``reserve-with-timeout 1`` so a stop request is noticed within a second
while the tube is empty; while jobs are ready it is the same as ``reserve``.

    python tests/bench/peers/greenstalk_threads.py 127.0.0.1:11300 some-tube 200 --handler noop
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import FrameType

import greenstalk

_CONNECTS_AT_ONCE = 200  # beanstalkd's listen backlog is 1024: do not flood it


def noop(job: greenstalk.Job[bytes]) -> None:
    pass


def sleep20(job: greenstalk.Job[bytes]) -> None:
    time.sleep(0.02)


HANDLERS: dict[str, Callable[[greenstalk.Job[bytes]], None]] = {"noop": noop, "sleep20": sleep20}


class Slot(threading.Thread):
    def __init__(
        self,
        address: tuple[str, int],
        tube: str,
        handler: Callable[[greenstalk.Job[bytes]], None],
        stop: threading.Event,
        gate: threading.Semaphore,
    ) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.tube = tube
        self.handler = handler
        self.stop = stop
        self.gate = gate
        self.reserved = self.deleted = 0
        self.error: str | None = None

    def run(self) -> None:
        try:
            with self.gate:
                # encoding=None: bodies stay bytes (no decode in the loop).
                client = greenstalk.Client(self.address, encoding=None, watch=self.tube)
            with client:
                while not self.stop.is_set():
                    try:
                        job = client.reserve(timeout=1)
                    except greenstalk.TimedOutError:
                        continue
                    self.reserved += 1
                    self.handler(job)
                    client.delete(job)
                    self.deleted += 1
        except Exception:
            self.error = traceback.format_exc()
            self.stop.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address", help="host:port of beanstalkd")
    parser.add_argument("tube")
    parser.add_argument("threads", type=int)
    parser.add_argument("--handler", choices=sorted(HANDLERS), default="noop")
    args = parser.parse_args(argv)
    host, _, port = args.address.rpartition(":")

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    gate = threading.Semaphore(_CONNECTS_AT_ONCE)
    slots = [
        Slot((host, int(port)), args.tube, HANDLERS[args.handler], stop, gate)
        for _ in range(args.threads)
    ]
    for slot in slots:
        slot.start()
    while not stop.wait(0.5):  # the main thread only waits for the signal
        pass
    for slot in slots:
        slot.join()
    errors = [s.error for s in slots if s.error]
    print(
        json.dumps(
            {
                "reserved": sum(s.reserved for s in slots),
                "deleted": sum(s.deleted for s in slots),
                "errors": len(errors),
            }
        ),
        flush=True,
    )
    if errors:
        print(f"{len(errors)} threads failed; first:\n{errors[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
