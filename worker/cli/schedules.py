"""``tubeworker schedules -c CONFIG``: each schedule's tick as beanstalkd holds it (next
fire, last fire, paused, state) and each heartbeat's last run; ``tubeworker schedule
trigger|pause|resume NAME -c CONFIG``: one fire now, outside the plan; skip the fires of
the next DURATION; fire again. All read the config's ``[[schedule]]`` and ``[[heartbeat]]``
tables and talk to the server that holds the ticks (the first reachable of ``[worker]
servers``), never to a daemon (see tubeworker.schedule_ops)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from tubeworker.admin_ops import parse_duration
from tubeworker.cli.admin import EX_NOINPUT, EX_OK, EX_USAGE, render_table, run_admin
from tubeworker.cli.startup import EX_CONFIG, add_run_options, load_all, print_problems
from tubeworker.config import Config, ScheduleConfig
from tubeworker.schedule import clock_schedules, fire_id
from tubeworker.schedule_ops import (
    ScheduleRow,
    heartbeat_rows,
    pause_schedule,
    read_rows,
    tick_server,
    trigger,
)

__all__ = ["add_schedule_commands", "schedule_action", "schedules"]


def add_schedule_commands(commands: Any) -> None:
    listing = commands.add_parser(
        "schedules", help="each schedule's next and last fire, and each heartbeat's last run"
    )
    add_run_options(listing)
    listing.add_argument("--json", action="store_true", help="one JSON document")
    one = commands.add_parser(
        "schedule", help="act on one schedule: trigger NAME | pause NAME DURATION | resume NAME"
    )
    one.add_argument("action", choices=("trigger", "pause", "resume"))
    one.add_argument("name", metavar="NAME")
    one.add_argument(
        "duration", metavar="DURATION", nargs="?", help="pause: for how long (30m, 2h, 86400s)"
    )
    add_run_options(one)


def _config(args: argparse.Namespace) -> Config | None:
    loaded = load_all(args)
    if loaded.problems or loaded.config is None:
        print_problems(loaded.problems)
        return None
    return loaded.config


def _when(moment: float | None) -> str:
    return "-" if moment is None else fire_id("", moment)[len("schedule::") :]


def _state(row: ScheduleRow, now: float) -> str:
    if row.paused(now):
        return f"paused until {_when(row.paused_until)}; {row.state}"
    return row.state


def schedules(args: argparse.Namespace) -> int:
    config = _config(args)
    if config is None:
        return EX_CONFIG

    async def main() -> int:
        address = await tick_server(config.servers)
        now = time.time()
        rows = await read_rows(address, clock_schedules(config.schedules, config.heartbeats))
        beats = await heartbeat_rows(address, config.heartbeats, now)
        if args.json:
            document = {
                "server": str(address),
                "schedules": [r.as_json(now) for r in rows],
                "heartbeats": beats,
            }
            print(json.dumps(document))
            return EX_OK
        if not rows:
            print("no schedules or heartbeats in this config")
            return EX_OK
        print(f"ticks on {address}")
        table = [[r.name, _when(r.next), _when(r.last), _state(r, now)] for r in rows]
        print(render_table(["SCHEDULE", "NEXT (UTC)", "LAST (UTC)", "TICK"], table))
        if beats:
            print()
            lines = [
                [
                    str(b["tube"]),
                    f"{b['every']:g}s",
                    str(b["last_run"] or "never"),
                    "-" if b["age"] is None else f"{b['age']:g}s",
                ]
                for b in beats
            ]
            print(render_table(["HEARTBEAT", "EVERY", "LAST RUN (UTC)", "AGE"], lines))
        return EX_OK

    return run_admin(main)


def schedule_action(args: argparse.Namespace) -> int:
    config = _config(args)
    if config is None:
        return EX_CONFIG
    known = clock_schedules(config.schedules, config.heartbeats)
    schedule = next((s for s in known if s.name == args.name), None)
    if schedule is None:
        print(f"tubeworker: no schedule named {args.name!r} in the config", file=sys.stderr)
        return EX_NOINPUT
    if args.action == "pause" and args.duration is None:
        print("tubeworker: schedule pause needs a DURATION (e.g. 2h)", file=sys.stderr)
        return EX_USAGE
    if args.action != "pause" and args.duration is not None:
        print(f"tubeworker: schedule {args.action} takes no DURATION", file=sys.stderr)
        return EX_USAGE
    return run_admin(lambda: _act(config, schedule, args))


async def _act(config: Config, schedule: ScheduleConfig, args: argparse.Namespace) -> int:
    address = await tick_server(config.servers)
    if args.action == "trigger":
        job_id, key = await trigger(address, schedule)
        print(f"triggered {schedule.name}: job {job_id} in {schedule.tube!r} on {address} ({key})")
        return EX_OK
    if args.action == "pause":
        until = time.time() + parse_duration(args.duration, "DURATION")
        row = await pause_schedule(address, schedule, until)
        print(
            f"paused {schedule.name} until {_when(until)}: fires before then are skipped "
            f"(next fire {_when(row.next)})"
        )
        return EX_OK
    row = await pause_schedule(address, schedule, None)
    print(f"resumed {schedule.name}: next fire {_when(row.next)}")
    return EX_OK
