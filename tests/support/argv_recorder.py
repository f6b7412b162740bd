"""Every process argument list on the machine, sampled while the test session runs.

A secret passed on a command line is readable by any user through /proc; the secret search
looks through what this saw. Sampling every 0.2 s can miss a process that lives less than
that; the database tools, the shortest-lived, have their own argv test (tests/test_database.py).
"""

from __future__ import annotations

import threading
from pathlib import Path


class ArgvRecorder(threading.Thread):
    """Collects distinct argument lists (NUL-joined bytes) until stopped; bounded in count and time."""

    def __init__(self, interval_s: float = 0.2, max_seconds: float = 5400, max_distinct: int = 200_000):
        super().__init__(name="argv-recorder", daemon=True)
        self.interval_s, self.max_seconds, self.max_distinct = interval_s, max_seconds, max_distinct
        self.seen: set[bytes] = set()
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        rounds = int(self.max_seconds / self.interval_s)
        while not self._halt.is_set() and self.samples < rounds and len(self.seen) < self.max_distinct:
            self.seen.update(_argv_now())
            self.samples += 1
            self._halt.wait(self.interval_s)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


def _argv_now() -> set[bytes]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes()
            except OSError:
                continue  # the process ended meanwhile
            if argv:
                found.add(argv)
    return found
