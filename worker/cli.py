"""The ``tubeworker`` command."""

from __future__ import annotations

import argparse
import sys

from worker import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tubeworker", description=__doc__)
    parser.add_argument("--version", action="version", version=f"tubeworker {__version__}")
    parser.add_argument("command", nargs="?", help="run | demo (coming with the daemon)")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    print(f"tubeworker {args.command}: not yet — the daemon is the next issue", file=sys.stderr)
    return 69  # EX_UNAVAILABLE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
