"""Peer ``greenstalk-sync``: the classic loop, reserve then delete, one connection.

Runs as its own process and imports only greenstalk and the standard library, so the
figure is what a greenstalk user gets. Consumes ``tube`` until ``reserve-with-timeout``
times out, then prints one JSON line: counts, elapsed wall time and CPU of the loop only
(connect and watch excluded, as for the in-process systems).

    python tests/bench/peers/greenstalk_sync.py 127.0.0.1:11300 some-tube 20000
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import greenstalk


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address", help="host:port of beanstalkd")
    parser.add_argument("tube")
    parser.add_argument("jobs", type=int, help="how many jobs the tube holds (checked)")
    parser.add_argument("--timeout", type=int, default=0, help="reserve-with-timeout seconds")
    args = parser.parse_args(argv)
    host, _, port = args.address.rpartition(":")

    # encoding=None: bodies stay bytes, as with the other systems (no decode in the loop).
    with greenstalk.Client((host, int(port)), encoding=None, watch=args.tube) as client:
        reserved = deleted = 0
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        while True:
            try:
                job = client.reserve(timeout=args.timeout)
            except greenstalk.TimedOutError:
                break
            reserved += 1
            client.delete(job)
            deleted += 1
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0

    print(json.dumps({"reserved": reserved, "deleted": deleted, "elapsed": elapsed, "cpu": cpu}))
    if reserved != args.jobs or deleted != args.jobs:
        print(f"expected {args.jobs} jobs, reserved {reserved}, deleted {deleted}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
