"""Start and stop the sandbox's own processes through PID files in $STATE/run.

Rules this module enforces:
- a process is only ever signalled by the PID recorded when *we* started it, and
  only if /proc/<pid>/cmdline still names the expected program (PIDs get reused);
- every process starts in its own session, so its PID is also its process-group
  id: stopping signals that group, which catches helpers it forked (nginx workers,
  dockerd's containerd) without touching anything else on the machine;
- stop = SIGTERM, a grace period, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from . import config


class SandboxError(RuntimeError):
    """A sandbox service could not be brought to the wanted state."""


def pid_file(name: str) -> Path:
    return config.RUN_DIR / f"{name}.pid"


def log_file(name: str) -> Path:
    return config.LOG_DIR / f"{name}.log"


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # Field 3 (after the parenthesised command name) is the state letter.
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def pid_alive(pid: int, expect: str | None = None) -> bool:
    """True if pid runs (not a zombie) and, when given, its cmdline contains `expect`."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if _is_zombie(pid):
        _reap(pid)
        return False
    return expect is None or expect in _cmdline(pid)


def _reap(pid: int) -> None:
    """Collect a child that exited, if it is ours (started in this same Python process)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def running(name: str, expect: str) -> int | None:
    """PID of our process `name` if it is alive; removes a stale PID file."""
    path = pid_file(name)
    pid = read_pid(path)
    if pid is None:
        return None
    if pid_alive(pid, expect):
        return pid
    path.unlink(missing_ok=True)
    return None


def _default_sigint() -> None:
    # `prefect worker` ignores SIGINT if it inherits SIG_IGN (e.g. from a shell's
    # background job); restore the default so it behaves like any other process.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    reset_sigint: bool = False,
) -> int:
    """Start argv in the background, output appended to $STATE/logs/<name>.log; returns the PID."""
    config.RUN_DIR.mkdir(parents=True, exist_ok=True)
    config.LOG_DIR.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ)
    full_env.update(env or {})
    with open(log_file(name), "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(cwd) if cwd else None,
            env=full_env,
            start_new_session=True,
            preexec_fn=_default_sigint if reset_sigint else None,
        )
    pid_file(name).write_text(f"{proc.pid}\n")
    return proc.pid


def _group_alive(pgid: int) -> bool:
    """True if any non-zombie process is still in process group `pgid`."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the command name: state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def terminate(pid: int, expect: str, grace: float = 15.0, sig: int = signal.SIGTERM) -> None:
    """Signal pid (and its process group if it leads one), then SIGKILL after `grace` s."""
    if not pid_alive(pid, expect):
        return
    try:
        leads_group = os.getpgid(pid) == pid
    except ProcessLookupError:
        return
    send = (lambda s: os.killpg(pid, s)) if leads_group else (lambda s: os.kill(pid, s))
    try:
        send(sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap(pid)
        if not pid_alive(pid) and not (leads_group and _group_alive(pid)):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        send(signal.SIGKILL)
    for _ in range(50):
        _reap(pid)
        if not pid_alive(pid):
            return
        time.sleep(0.1)
    raise SandboxError(f"process {pid} ({expect}) survived SIGKILL")


def stop(name: str, expect: str, grace: float = 15.0) -> bool:
    """Stop our process `name` by its PID file. Returns True if something was stopped."""
    pid = running(name, expect)
    if pid is None:
        pid_file(name).unlink(missing_ok=True)
        return False
    terminate(pid, expect, grace)
    pid_file(name).unlink(missing_ok=True)
    return True


# --- small probes ---------------------------------------------------------------
def port_open(port: int, host: str = config.HOST, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_bindable(port: int, host: str = config.HOST) -> bool:
    """Could a server bind host:port right now (as servers do, with SO_REUSEADDR)?"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            return True
        except OSError:
            return False


def ensure_ports_free(name: str, ports: Sequence[int], timeout: float = 75.0) -> None:
    """Fail if another server listens on a port; wait out TIME_WAIT leftovers.

    A client socket that used one of our ports as its ephemeral source port leaves
    a TIME_WAIT entry that blocks bind() for up to 60 s even with SO_REUSEADDR
    (reserve_ports() in services.py stops new ones appearing).
    """
    listening = [p for p in ports if port_open(p)]
    if listening:
        raise SandboxError(f"{name}: port(s) {listening} in use by a process the sandbox did not start; stop it first")
    blocked = [p for p in ports if not port_bindable(p)]
    if blocked:
        print(f"[sandbox] {name}: port(s) {blocked} held by TIME_WAIT sockets, waiting", flush=True)
        if not wait_for(lambda: all(port_bindable(p) for p in blocked), timeout, 1.0):
            raise SandboxError(f"{name}: port(s) {blocked} still cannot be bound")


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return True
        except Exception:  # a probe failing while a server starts is expected
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def log_tail(name: str, lines: int = 15) -> str:
    try:
        text = log_file(name).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """Run a short command, capturing output; raise SandboxError with its output on failure."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    result = subprocess.run(
        list(argv), capture_output=True, text=True, env=full_env, cwd=str(cwd) if cwd else None, timeout=timeout
    )
    if check and result.returncode != 0:
        raise SandboxError(
            f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )
    return result


def mounts_under(directory: Path) -> list[Path]:
    """Mount points at or below ``directory`` (from /proc/self/mountinfo; field 5 is the mount point)."""
    root = Path(directory).resolve()
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = Path(line.split()[4].replace("\\040", " "))
        if point == root or root in point.parents:
            points.append(point)
    return points


def unmount(directory: Path, busy_wait: float = 10.0) -> bool:
    """Unmount every layer mounted at ``directory`` (ours: bind mounts our dockerd made, one per
    restart with live-restore). True if there was any.

    Right after dockerd stops the mount is now and then busy for a moment (something it started
    is still exiting; CI met this once in a full run): wait for that, then detach lazily. Lazy is
    safe for these mounts: each binds the directory onto itself, so nothing below it changes."""
    layers = 0
    deadline = time.monotonic() + busy_wait
    while Path(directory).resolve() in mounts_under(directory) and layers < 20:
        lazy = ["--lazy"] if time.monotonic() > deadline else []
        result = subprocess.run(["umount", *lazy, str(directory)], capture_output=True, text=True, timeout=30)
        if result.returncode == 0:
            layers += 1
        elif lazy:
            raise SandboxError(f"umount --lazy {directory} failed: {result.stderr.strip()}")
        else:
            time.sleep(0.25)
    return layers > 0
