"""The Docker target's revision history (blocks/docker/history.py) and what its block hands out.

No engine is needed: the history is a file, and the block's engine makes its Docker client only
when a call needs the engine.
"""

from __future__ import annotations

import json

import pytest

from blocks.docker.engine import DockerEngine
from blocks.docker.history import RevisionHistory
from blocks.docker.target import DockerTarget
from blocks.target import DeployTarget, TargetEngine
from tasks.core.errors import NoEarlierRevision, PermanentError, TemporaryError

pytestmark = pytest.mark.unit


def test_revisions_are_numbered_in_order_and_kept_in_the_file(tmp_path):
    history = RevisionHistory(tmp_path / "state" / "history.json")
    assert history.revisions() == []
    first = history.record("registry/app:3.2.0@sha256:a", "3.2.0")
    second = history.record("registry/app:3.2.1@sha256:b", "3.2.1")
    assert (first.number, second.number) == (1, 2)
    stored = json.loads((tmp_path / "state" / "history.json").read_text())
    assert [(r["number"], r["version"]) for r in stored] == [(1, "3.2.0"), (2, "3.2.1")]
    assert RevisionHistory(tmp_path / "state" / "history.json").find(2) == second
    assert not list((tmp_path / "state").glob("*.tmp")), "written through a temporary file, then renamed"


def test_an_undo_goes_to_the_revision_before_the_newest_or_the_one_named(tmp_path):
    history = RevisionHistory(tmp_path / "history.json")
    for version in ("3.1.0", "3.2.0", "3.2.1"):
        history.record(f"registry/app:{version}", version)
    assert history.undo_target(None).version == "3.2.0"
    assert history.undo_target(1).version == "3.1.0"


def test_no_earlier_revision_is_the_trees_error(tmp_path):
    history = RevisionHistory(tmp_path / "history.json")
    with pytest.raises(NoEarlierRevision, match="no earlier revision to roll back to"):
        history.undo_target(None)
    history.record("registry/app:3.2.0", "3.2.0")
    with pytest.raises(NoEarlierRevision, match="no earlier revision"):
        history.undo_target(None)
    with pytest.raises(NoEarlierRevision, match="no revision 7 to roll back to") as caught:
        history.undo_target(7)
    assert isinstance(caught.value, PermanentError)


def test_the_block_hands_out_an_engine_that_reads_history_without_an_engine(tmp_path):
    target = DockerTarget(docker_host=f"unix://{tmp_path}/no-docker.sock", history_file=str(tmp_path / "h.json"))
    assert isinstance(target, DeployTarget) and not DockerTarget.__abstractmethods__
    engine = target.engine()
    assert isinstance(engine, DockerEngine) and isinstance(engine, TargetEngine)
    RevisionHistory(tmp_path / "h.json").record("registry/app:3.2.0", "3.2.0")
    assert [r.version for r in target.history()] == ["3.2.0"]
    with pytest.raises(NoEarlierRevision):
        target.rollback(None, {}, 5)  # decided from the history, before any engine call
    with pytest.raises(TemporaryError, match="did not answer while connecting"):
        target.current_revision()
