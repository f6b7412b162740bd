"""One identity for the deploy lock, the journal and the backups (issue 15).

Every spelling of one database (``localhost``, ``127.0.0.1``, ``::1``) and of one Docker engine
gives one identity, hence one journal key and one backup namespace; another port, database or
target gives another. The backup storage keeps each database in its own directory and still
reads backups of the flat layout of earlier releases by name.
"""

from __future__ import annotations

import re

import pytest
from prefect.filesystems import LocalFileSystem, RemoteFileSystem

from blocks.database import BackupStorage, PostgresDatabase
from blocks.docker.target import DockerTarget
from tasks.core.errors import BackupMissing
from tasks.core.identity import database_identity, identity_key
from tasks.database.backup import BackupResult
from tasks.release.identity import DeployIdentity, deploy_identity
from tasks.release.journal import journal_key, legacy_journal_key, load_backup

pytestmark = pytest.mark.unit

ARTIFACT_KEY = re.compile(r"^[a-z0-9-]+$")


def database(host: str = "127.0.0.1", port: int = 55432, dbname: str = "architect_staging", **fields):
    return PostgresDatabase(host=host, port=port, dbname=dbname, password="not-used", **fields)


class Env:
    """What deploy_identity reads of an environment block: its database and target."""

    def __init__(self, db: PostgresDatabase, target: DockerTarget):
        self.database, self.target = db, target


def test_every_spelling_of_loopback_is_one_database():
    names = {database(host).identity() for host in ("localhost", "127.0.0.1", "::1", "LOCALHOST")}
    assert names == {"loopback:55432/architect_staging"}
    assert database_identity("localhost", 55432, "architect_staging") == database("127.0.0.1").identity()


def test_port_and_name_make_another_database():
    base = database().identity()
    assert database(port=55433).identity() != base
    assert database(dbname="architect_other").identity() != base


def test_an_edited_host_is_resolved_again():
    db = database("127.0.0.1")
    assert db.identity().startswith("loopback:")
    moved = db.model_copy(update={"host": "db.example.invalid"})
    assert moved.identity() == "db.example.invalid:55432/architect_staging"


def test_the_backup_namespace_is_the_identitys_database_key():
    a, b = database("localhost"), database("127.0.0.1")
    target = DockerTarget()
    assert a.backup_namespace() == b.backup_namespace() == deploy_identity(Env(a, target)).database_key
    assert database(dbname="other").backup_namespace() != a.backup_namespace()
    assert ARTIFACT_KEY.match(a.backup_namespace()) and a.backup_namespace().startswith("architect-staging-")


def test_two_environments_sharing_database_and_target_share_one_journal():
    one = deploy_identity(Env(database("localhost"), DockerTarget(docker_host="tcp://localhost:2375")))
    two = deploy_identity(Env(database("127.0.0.1"), DockerTarget(docker_host="tcp://127.0.0.1:2375")))
    assert one == two and journal_key(one) == journal_key(two)
    assert ARTIFACT_KEY.match(journal_key(one)), journal_key(one)
    # The key of earlier releases was the environment's: two environments, two journals.
    assert legacy_journal_key("staging") != legacy_journal_key("sandbox")


def test_another_target_is_another_journal_but_the_same_backups():
    db = database()
    docker = deploy_identity(Env(db, DockerTarget()))
    other_app = deploy_identity(Env(db, DockerTarget(app_name="architect-canary")))
    assert docker.key != other_app.key
    assert docker.database_key == other_app.database_key


def test_keys_differ_where_readable_parts_agree():
    assert identity_key("a:1/x_y", "x_y") != identity_key("a:2/x_y", "x_y")
    assert identity_key("a:1/x_y", "x_y").startswith("x-y-")
    assert DeployIdentity(database="a:1/db", target="t").dbname == "db"


def test_namespaced_storage_writes_in_its_directory_and_reads_the_flat_layout(tmp_path):
    (tmp_path / "pre-deployment-100.dump").write_bytes(b"old flat dump")
    store = BackupStorage(LocalFileSystem(basepath=str(tmp_path)), namespace="db-1")
    store.write_bytes("pre-deployment-200.manifest.json", b"{}")
    assert (tmp_path / "db-1" / "pre-deployment-200.manifest.json").read_bytes() == b"{}"
    assert [f.name for f in store.list()] == ["pre-deployment-200.manifest.json"]
    assert {f.name for f in store.root().list()} == {"pre-deployment-100.dump"}
    # An old backup is found by its name, where it is: restores of the flat layout still work.
    assert store.exists("pre-deployment-100.dump") and store.read_bytes("pre-deployment-100.dump") == b"old flat dump"
    assert store.local_path("pre-deployment-100.dump") == tmp_path / "pre-deployment-100.dump"
    assert store.local_path("pre-deployment-300.dump") == tmp_path / "db-1" / "pre-deployment-300.dump"
    assert not store.exists("pre-deployment-300.dump")
    assert store.describe().endswith("/db-1)")


def test_namespaced_remote_storage(tmp_path):
    block = RemoteFileSystem(basepath=f"memory://identity-test-{tmp_path.name}")
    store = BackupStorage(block, namespace="db-2")
    with store.open_write("pre-deployment-1.dump") as fh:
        fh.write(b"dump")
    store.root().write_bytes("pre-deployment-0.dump", b"flat")
    assert [f.name for f in store.list()] == ["pre-deployment-1.dump"]
    assert block.filesystem.exists(block._resolve_path("db-2/pre-deployment-1.dump"))
    assert store.read_bytes("pre-deployment-0.dump") == b"flat"
    store.delete("pre-deployment-1.dump")
    assert store.list() == []


def _manifest(name: str) -> bytes:
    return (
        BackupResult(
            name=name,
            dump_file=f"{name}.dump",
            manifest_file=f"{name}.manifest.json",
            storage="test",
            created_at="2026-12-01T00:00:00Z",
            size_bytes=4,
            duration_s=0.1,
            schema_version=2,
            schema_fingerprint="f",
            server_version="15",
        )
        .model_dump_json()
        .encode()
    )


def test_a_journal_backup_is_found_in_the_namespace_or_the_flat_layout(tmp_path):
    db = database(backup_storage=LocalFileSystem(basepath=str(tmp_path)))
    store = db.backups()
    store.write_bytes("pre-deployment-2.manifest.json", _manifest("pre-deployment-2"))
    store.write_bytes("pre-deployment-2.dump", b"dump")
    (tmp_path / "pre-deployment-1.manifest.json").write_bytes(_manifest("pre-deployment-1"))
    (tmp_path / "pre-deployment-1.dump").write_bytes(b"dump")
    assert load_backup(db, "pre-deployment-2").name == "pre-deployment-2"
    assert load_backup(db, "pre-deployment-1").name == "pre-deployment-1"
    assert load_backup(db, None) is None  # the run took none: not an error


def test_a_missing_dump_is_said_to_be_missing(tmp_path):
    db = database(backup_storage=LocalFileSystem(basepath=str(tmp_path)))
    db.backups().write_bytes("pre-deployment-3.manifest.json", _manifest("pre-deployment-3"))
    with pytest.raises(BackupMissing, match=r"pre-deployment-3 is missing: its dump pre-deployment-3\.dump") as dump:
        load_backup(db, "pre-deployment-3")
    with pytest.raises(BackupMissing, match=r"pre-deployment-4 is missing: no pre-deployment-4\.manifest\.json"):
        load_backup(db, "pre-deployment-4")
    assert "no pre-deployment backup was taken" not in str(dump.value)
