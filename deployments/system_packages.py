"""The system packages of `system-packages.txt`: read the list, install what is missing, purge.

    python3 -m deployments.system_packages install        # what `make demo` and `make test` run
    python3 -m deployments.system_packages purge-added     # CI: remove every `install` entry first
    python3 -m deployments.system_packages missing         # print the entries not installed

Standard library only: it runs before pip has installed anything.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

LIST = Path(__file__).resolve().parent.parent / "system-packages.txt"
ORIGINS = ("base", "install")
APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}


@dataclass(frozen=True)
class Entry:
    name: str  # a Debian package, or an absolute path the machine image ships outside any package
    origin: str
    why: str

    @property
    def is_file(self) -> bool:
        return self.name.startswith("/")


def read_list(path: Path = LIST) -> list[Entry]:
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split(None, 2)
        if len(parts) < 3 or parts[1] not in ORIGINS:
            raise ValueError(f"{path.name}:{number}: expected 'package origin why', origin one of {ORIGINS}: {line!r}")
        entries.append(Entry(*parts))
    return entries


def installed_packages() -> set[str]:
    out = subprocess.run(
        ["dpkg-query", "--show", "--showformat=${Package}\t${db:Status-Abbrev}\n"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {name for name, _, status in (line.partition("\t") for line in out.splitlines()) if status.startswith("ii")}


def missing(entries: list[Entry]) -> list[Entry]:
    have = installed_packages()
    return [e for e in entries if (not os.path.exists(e.name) if e.is_file else e.name not in have)]


def install(entries: list[Entry]) -> int:
    lacking = missing(entries)
    base = [e.name for e in lacking if e.origin == "base"]
    if base:
        print(f"[packages] the machine image should ship these, and does not: {' '.join(base)}", file=sys.stderr)
    wanted = [e.name for e in lacking if e.origin == "install"]
    if not wanted:
        print("[packages] every system package is installed")
        return 1 if base else 0
    started = time.monotonic()
    print(f"[packages] installing {len(wanted)} Debian packages: {' '.join(wanted)}", flush=True)
    subprocess.run(["apt-get", "update", "-q"], env=APT_ENV, check=True)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *wanted], env=APT_ENV, check=True)
    print(f"[packages] installed in {time.monotonic() - started:.1f} s", flush=True)
    still = missing(entries)
    if still:
        print(f"[packages] still missing after the install: {' '.join(e.name for e in still)}", file=sys.stderr)
        return 1
    return 0


def purge_added(entries: list[Entry]) -> int:
    """Remove every package the project installs, and what only they pulled in, as on a fresh machine."""
    have = installed_packages()
    added = [e.name for e in entries if e.origin == "install" and e.name in have]
    if added:
        print(f"[packages] purging {' '.join(added)}", flush=True)
        subprocess.run(["apt-get", "purge", "-y", "-q", *added], env=APT_ENV, check=True)
        subprocess.run(["apt-get", "autoremove", "--purge", "-y", "-q"], env=APT_ENV, check=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m deployments.system_packages", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("install", "purge-added", "missing"))
    args = parser.parse_args(argv)
    entries = read_list()
    if args.command == "install":
        return install(entries)
    if args.command == "purge-added":
        return purge_added(entries)
    for entry in missing(entries):
        print(entry.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
