"""The sandbox's process and mount helpers (sandbox/procs.py) on their own: no sandbox needed."""

from __future__ import annotations

import subprocess

import pytest

from sandbox import procs

pytestmark = pytest.mark.unit


def test_unmount_detaches_a_bind_mount_that_stays_busy(tmp_path):
    # What `down` meets now and then right after dockerd exits: its data root's mount still in use.
    directory = tmp_path / "data-root"
    directory.mkdir()
    (directory / "kept").write_text("data")
    subprocess.run(["mount", "--bind", str(directory), str(directory)], check=True)
    user = subprocess.Popen(["sleep", "60"], cwd=directory)
    try:
        assert subprocess.run(["umount", str(directory)], capture_output=True).returncode != 0, "not busy"
        assert procs.unmount(directory, busy_wait=0.5)
        assert procs.mounts_under(directory) == []
        assert (directory / "kept").read_text() == "data"
    finally:
        user.kill()
        user.wait()
        procs.unmount(directory, busy_wait=0)
