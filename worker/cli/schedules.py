"""``tubeworker schedules -c CONFIG``: each schedule's tick as beanstalkd holds it (next
fire, last fire, state); ``tubeworker schedule trigger NAME -c CONFIG``: one fire now,
outside the plan. Both read the ``[[schedule]]`` tables of the config and talk to the
server that holds the ticks (the first reachable of ``[worker] servers``), never to a
daemon."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

import greenstalk

from tubeworker.beanstalk.client import Address, Client
from tubeworker.cli.admin import (
    EX_NOINPUT,
    EX_OK,
    AdminError,
    admin_client,
    render_table,
    run_admin,
)
from tubeworker.cli.startup import EX_CONFIG, add_run_options, load_all, print_problems
from tubeworker.config import Config, ScheduleConfig
from tubeworker.envelope import encode_envelope
from tubeworker.schedule import Tick, fire_id, schedule_tube

__all__ = ["add_schedule_commands", "schedule_trigger", "schedules"]


def add_schedule_commands(commands: Any) -> None:
    listing = commands.add_parser(
        "schedules", help="each schedule's next and last fire and its tick's state"
    )
    add_run_options(listing)
    listing.add_argument("--json", action="store_true", help="one JSON document")
    one = commands.add_parser("schedule", help="act on one schedule: trigger NAME")
    one.add_argument("action", choices=("trigger",))
    one.add_argument("name", metavar="NAME")
    add_run_options(one)


def _config(args: argparse.Namespace) -> Config | None:
    loaded = load_all(args)
    if loaded.problems or loaded.config is None:
        print_problems(loaded.problems)
        return None
    return loaded.config


async def _tick_server(config: Config) -> Address:
    """The first reachable server (where the daemons keep the ticks)."""
    last: AdminError | None = None
    for address in config.servers:
        try:
            async with admin_client(address):
                return address
        except AdminError as exc:
            last = exc
    assert last is not None
    raise last


async def _row(client: Client, schedule: ScheduleConfig) -> dict[str, Any]:
    tube = schedule_tube(schedule.name)
    row: dict[str, Any] = {"name": schedule.name, "next": None, "last": None}
    try:
        stats = await client.stats_tube(tube)
    except greenstalk.NotFoundError:
        return {**row, "state": "missing (a daemon's planner makes it)"}
    await client.use(tube)
    tick = None
    for peek in (client.peek_delayed, client.peek_ready):
        try:
            tick = Tick.decode((await peek()).body)
            break
        except greenstalk.NotFoundError:
            continue
    if stats.current_jobs_reserved:
        state = "held (a daemon waits to fire it)"
    elif tick is not None:
        state = "waiting"
    else:
        state = "missing (a daemon's planner makes it)"
    if tick is not None:
        row["next"] = fire_id("", tick.fire)[len("schedule::") :]
        row["last"] = None if tick.last is None else fire_id("", tick.last)[len("schedule::") :]
    extra = stats.current_jobs_ready + stats.current_jobs_delayed + stats.current_jobs_reserved
    if extra > 1:
        state += f"; {extra} ticks"
    return {**row, "state": state}


def schedules(args: argparse.Namespace) -> int:
    config = _config(args)
    if config is None:
        return EX_CONFIG

    async def main() -> int:
        address = await _tick_server(config)
        async with admin_client(address) as client:
            rows = [await _row(client, s) for s in config.schedules]
        if args.json:
            print(json.dumps({"server": str(address), "schedules": rows}))
        elif not rows:
            print("no schedules in this config")
        else:
            print(f"ticks on {address}")
            table = [[r["name"], r["next"] or "-", r["last"] or "-", r["state"]] for r in rows]
            print(render_table(["SCHEDULE", "NEXT (UTC)", "LAST (UTC)", "TICK"], table))
        return EX_OK

    return run_admin(main)


def schedule_trigger(args: argparse.Namespace) -> int:
    config = _config(args)
    if config is None:
        return EX_CONFIG
    schedule = next((s for s in config.schedules if s.name == args.name), None)
    if schedule is None:
        print(f"tubeworker: no schedule named {args.name!r} in the config", file=sys.stderr)
        return EX_NOINPUT

    async def main() -> int:
        address = await _tick_server(config)
        now = math.floor(time.time())
        key = fire_id(schedule.name, now)
        if schedule.body is not None:
            body = schedule.body.encode()
        else:
            assert schedule.task is not None
            body = encode_envelope(schedule.task, schedule.payload, id=key)
        async with admin_client(address) as client:
            await client.use(schedule.tube)
            job_id = await client.put(
                body, priority=schedule.priority, delay=schedule.delay, ttr=schedule.ttr
            )
        print(f"triggered {schedule.name}: job {job_id} in {schedule.tube!r} on {address} ({key})")
        return EX_OK

    return run_admin(main)
