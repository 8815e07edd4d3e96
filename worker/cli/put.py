"""``tubeworker put TUBE [BODY|-]`` or ``put TUBE --task NAME --payload JSON``: put one job
and print its id."""

from __future__ import annotations

import argparse
import json
import os
import sys
from functools import partial

from tubeworker.admin_ops import put_job
from tubeworker.beanstalk.client import Address
from tubeworker.beanstalk.protocol import DEFAULT_PRIORITY, DEFAULT_TTR, MAX_INT
from tubeworker.cli.admin import (
    EX_DATAERR,
    EX_OK,
    EX_USAGE,
    EXPECTED,
    AdminError,
    fail,
    parse_int,
    run_admin,
    single_server,
)
from tubeworker.producer import make_envelope, prepare_put, to_seconds

__all__ = ["put"]


def _envelope(args: argparse.Namespace) -> bytes:
    payload = None
    if args.payload is not None:
        try:
            payload = json.loads(args.payload)
        except ValueError as exc:
            raise AdminError(f"--payload is not JSON: {exc}", EX_DATAERR) from None
    # The handlers this machine has: a typed task's payload is checked as the worker will.
    from tubeworker.cli.schemas import contracts_for

    _, code = contracts_for(getattr(args, "config", None))
    if code:
        raise AdminError("the config has problems (above)", code)
    return make_envelope(args.task, payload, id=getattr(args, "id", None))


def body_from(args: argparse.Namespace) -> bytes:
    """The body: the envelope of --task, stdin's bytes for '-', else BODY as given."""
    if args.task is not None:
        if args.body is not None:
            raise AdminError("give BODY or --task, not both", EX_USAGE)
        return _envelope(args)
    if getattr(args, "id", None) is not None:
        raise AdminError("--id needs --task NAME (it is the envelope's key)", EX_USAGE)
    if args.payload is not None:
        raise AdminError("--payload needs --task NAME", EX_USAGE)
    if args.body is None:
        raise AdminError("give a BODY, '-' to read stdin, or --task NAME", EX_USAGE)
    if args.body == "-":
        return sys.stdin.buffer.read()
    return os.fsencode(args.body)  # the argument's bytes, even if not UTF-8


async def _put(
    address: Address, tube: str, body: bytes, priority: int, delay: int, ttr: int
) -> int:
    job_id = await put_job(address, tube, body, priority=priority, delay=delay, ttr=ttr)
    print(job_id, flush=True)
    return EX_OK


def put(args: argparse.Namespace) -> int:
    try:
        address = single_server(args)
        priority = (
            DEFAULT_PRIORITY
            if args.priority is None
            else parse_int(args.priority, "--priority", 0, MAX_INT)
        )
        delay = 0 if args.delay is None else to_seconds(args.delay, "--delay")
        ttr = DEFAULT_TTR if args.ttr is None else to_seconds(args.ttr, "--ttr", minimum=1)
        # The producer's checks, the ones apps get (InvalidJob: exit 65, nothing sent).
        job = prepare_put(args.tube, body_from(args), priority=priority, delay=delay, ttr=ttr)
    except EXPECTED as exc:
        return fail(exc)
    return run_admin(partial(_put, address, job.tube, job.body, job.priority, job.delay, job.ttr))
