"""CLI: python -m sandbox up | down [--purge] | status [--json].

Exit codes: 0 all healthy; 1 a service is unhealthy or could not start;
2 (up only) every service is healthy but a hook (make_app_repo.sh, the blocks
hook) failed.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import services
from .procs import SandboxError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description="Local staging sandbox on 127.0.0.1")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start everything that is not healthy (idempotent)")
    down = sub.add_parser("down", help="stop what up started; data is kept")
    down.add_argument("--purge", action="store_true", help="also delete the state directory")
    stat = sub.add_parser("status", help="check every service; exit 1 if any is unhealthy")
    stat.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)

    problems: list[str] = []
    try:
        if args.command == "up":
            problems = services.up()
        elif args.command == "down":
            services.down(purge=args.purge)
            return 0
    except SandboxError as exc:
        print(f"[sandbox] ERROR: {exc}", file=sys.stderr)
        if args.command == "up":
            print(services.format_status(services.status()))
        return 1

    rows = services.status()
    if getattr(args, "json", False):
        print(json.dumps(rows, indent=2))
    else:
        print(services.format_status(rows))
    if not all(r["healthy"] for r in rows):
        return 1
    if problems:
        print("[sandbox] servers healthy, but hooks failed:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
