"""The run's configuration is frozen at its start: the rollback uses the snapshot, not the block as edited later."""

from __future__ import annotations

import json

import pytest
from prefect.blocks.fields import SecretDict

from blocks.database import PostgresDatabase
from blocks.docker.target import DockerTarget
from blocks.environment import StagingEnvironment
from blocks.registry import ImageRegistry
from blocks.slack import SlackChannel
from tasks.core.errors import PermanentError
from tasks.database.manifest import table_checksums
from tasks.release.snapshot import MASK, snapshot_of, with_secrets_of
from tests.support.app_state import schema_version, serving_versions
from tests.support.deploys import GOOD_WITH_MIGRATION
from tests.support.first_deploy import BackgroundDeploy, artifacts_of_run, rollback_runs_of
from tests.support.secret_search import find_leaks, secret_values
from tests.support.signoff import edit_environment

SECRETS = {"db": "db-password-0123", "smoke": "smoke-password-0123", "jwt": "jwt-secret-0123", "bot": "xoxb-token-0123"}


def environment(dbname: str = "architect_staging", **secrets: str) -> StagingEnvironment:
    s = {**SECRETS, **secrets}
    return StagingEnvironment(
        app_repo="/srv/app",
        api_url="https://localhost:58443",
        target=DockerTarget(),
        registry=ImageRegistry(address="127.0.0.1:55000"),
        database=PostgresDatabase(host="127.0.0.1", port=55432, dbname=dbname, password=s["db"]),
        prometheus_url="http://127.0.0.1:59090",
        slack=SlackChannel(bot_token=s["bot"], channel="#staging-deploys"),
        app_secrets=SecretDict({"JWT_SECRET": s["jwt"]}),
        smoke_password=s["smoke"],
    )


@pytest.mark.unit
def test_a_snapshot_holds_no_secret_and_keeps_every_other_setting():
    snapshot = snapshot_of("staging", environment())
    text = snapshot.model_dump_json()
    assert [v for v in SECRETS.values() if v in text] == []
    assert snapshot.config["database"]["dbname"] == "architect_staging"
    assert snapshot.config["database"]["password"] == MASK and snapshot.config["app_secrets"] == MASK
    assert len(snapshot.sha256) == 64


@pytest.mark.unit
def test_the_snapshot_is_used_with_the_secrets_the_block_holds_now():
    snapshot = snapshot_of("staging", environment())
    # Edited since: the database moved and the password was rotated.
    now = environment(dbname="somewhere_else", db="rotated-password-9876")
    env = with_secrets_of(snapshot, now)
    assert env.database.dbname == "architect_staging", "the run's database, not the block's new one"
    assert env.database.password.get_secret_value() == "rotated-password-9876"
    assert env.app_environment()["JWT_SECRET"] == SECRETS["jwt"]
    assert env.slack.bot_token.get_secret_value() == SECRETS["bot"]


@pytest.mark.unit
def test_a_secret_the_block_no_longer_has_is_an_error_naming_it():
    snapshot = snapshot_of("staging", environment())
    now = environment().model_copy(update={"slack": None})
    with pytest.raises(PermanentError, match="slack.bot_token"):
        with_secrets_of(snapshot, now)


@pytest.mark.sandbox
def test_an_environment_edited_during_the_sign_off_pause_does_not_move_the_restore(
    sandbox_env, database_at_schema_2, deployed_good_release, environment_copy, throwaway_database
):
    name = environment_copy()
    before, other_before = table_checksums(database_at_schema_2), table_checksums(throwaway_database)
    run = BackgroundDeploy(*GOOD_WITH_MIGRATION, environment=name, restore_policy="always")
    run.wait_paused()
    assert schema_version(database_at_schema_2) == 3, "the release migrated the run's database"

    edit_environment(name, database=throwaway_database)  # as anyone who reaches the API could
    assert StagingEnvironment.load(name).database.dbname == throwaway_database.dbname
    state = run.reject(notes="no")

    assert StagingEnvironment.load("sandbox").database.dbname == sandbox_env.database.dbname
    assert state.is_failed()
    assert "database restored from pre-deployment-" in state.message, state.message
    assert schema_version(database_at_schema_2) == 2 and table_checksums(database_at_schema_2) == before
    assert table_checksums(throwaway_database) == other_before, "the database the block names now was touched"
    assert serving_versions(sandbox_env) == {deployed_good_release}
    # Kept with the run, and in the rollback's parameters, without a secret.
    [rollback] = rollback_runs_of(run.id)
    snapshot = artifacts_of_run(run.id)["environment-snapshot"].data
    assert sandbox_env.database.dbname in snapshot
    stored = {"snapshot artifact": snapshot.encode(), "rollback parameters": json.dumps(rollback.parameters).encode()}
    assert rollback.parameters["config"]["config"]["database"]["dbname"] == sandbox_env.database.dbname
    assert find_leaks(stored, secret_values()) == []
