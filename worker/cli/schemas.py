"""``tubeworker schemas [--task NAME] [-c CONFIG]``: each typed task's payload as JSON
Schema, for producers in other languages (and what ``/schemas`` serves)."""

from __future__ import annotations

import argparse
import json

from tubeworker.cli.startup import EX_CONFIG, EX_OK, load_all, print_problems
from tubeworker.config import Overrides
from tubeworker.contracts import declare, schema_document
from tubeworker.registry import Registry, discover
from tubeworker.security.keys import load_keys
from tubeworker.security.signing import install_signer

__all__ = ["add_schemas_command", "contracts_for", "schemas"]

EX_NOTFOUND = 66  # EX_NOINPUT: no such (typed) task


def add_schemas_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "schemas",
        help="print the JSON Schema of each typed task's payload",
        description="Every handler that declares its payload type "
        "(@handler(payload=Model, version=N)): its task name, version and the payload's JSON "
        "Schema, as one JSON object (task → {version, schema}). For producers in other "
        'languages: validate before putting, and write the version as the envelope\'s "v".',
    )
    parser.add_argument("--task", metavar="NAME", help="only this task (its schema alone)")
    parser.add_argument("-c", "--config", help="also load this config's [handlers]")


def contracts_for(config: str | None) -> tuple[Registry, int]:
    """The handlers of the entry points and (with a config) its [handlers], their contracts
    declared for this process's puts; and an exit code for the config's problems."""
    if config:
        args = argparse.Namespace(config=config)
        loaded = load_all(args, overrides=Overrides())
        print_problems(loaded.problems)
        if loaded.config is not None and loaded.config.security.signing_keys_file:
            # What this process puts is signed as the daemon's own puts are.
            install_signer(load_keys(loaded.config.security.signing_keys_file))
        return loaded.registry, EX_CONFIG if loaded.problems else EX_OK
    registry = discover()
    declare(registry.contracts())
    return registry, EX_OK


def schemas(args: argparse.Namespace) -> int:
    registry, code = contracts_for(args.config)
    if code != EX_OK:
        return code
    document = schema_document(registry.contracts())
    if args.task is not None:
        if args.task not in document:
            known = ", ".join(document) or "none"
            where = "registered" if args.task in registry.handlers else "known"
            print(
                f"tubeworker: task {args.task!r} has no declared payload type "
                f"({where}; typed tasks: {known})",
                flush=True,
            )
            return EX_NOTFOUND
        print(json.dumps(document[args.task], indent=2))
        return EX_OK
    print(json.dumps(document, indent=2))
    return EX_OK
