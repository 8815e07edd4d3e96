"""``tubeworker handlers``: every handler the daemon would know, from entry points and (with
``-c``) the config's ``[handlers]`` table."""

from __future__ import annotations

import argparse

from tubeworker.cli.startup import EX_CONFIG, EX_OK, ConfigExit, load_or_exit
from tubeworker.config import Overrides
from tubeworker.registry import Registry, discover

__all__ = ["list_handlers"]


def list_handlers(args: argparse.Namespace) -> int:
    registry: Registry
    if args.config:
        try:
            _, registry = load_or_exit(args, overrides=Overrides())
        except ConfigExit:
            return EX_CONFIG
    else:
        registry = discover()
    if not registry.handlers and not registry.broken:
        print("no handlers registered in entry-point group 'tubeworker.handlers'")
    for name, registered in sorted(registry.handlers.items()):
        spec = registered.spec
        options = [
            "async" if spec.is_async else "sync",
            *([f"apis={','.join(spec.apis)}"] if spec.apis else []),
            *([f"timeout={spec.timeout:g}s"] if spec.timeout else []),
            *([f"max_attempts={spec.max_attempts}"] if spec.max_attempts else []),
            *(["long_running"] if spec.long_running else []),
        ]
        print(f"{name:24} {registered.target:32} {registered.distribution:16} {' '.join(options)}")
    for name, broken in sorted(registry.broken.items()):
        print(f"{name:24} {broken.target:32} {broken.distribution:16} BROKEN: {broken.error}")
    return EX_OK
