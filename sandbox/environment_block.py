"""Save the blocks of the local sandbox environment (``python -m sandbox.environment_block``).

The sandbox calls this after its services are up; it registers every block type of the
project (so each shows in the UI with its description) and saves an environment block
named ``sandbox`` that points at the sandbox's services.
"""

from __future__ import annotations

from prefect.blocks.fields import SecretDict
from prefect.filesystems import LocalFileSystem

from blocks.database import PostgresDatabase
from blocks.docker.target import DockerTarget
from blocks.kubernetes.target import KubernetesTarget
from blocks.environment import PerformanceTargets, Role, StagingEnvironment
from blocks.registry import ImageRegistry
from blocks.slack import SlackChannel
from sandbox import config

SANDBOX = "sandbox"
# The sandbox's four leads; a real environment names real people.
SANDBOX_APPROVERS = {
    Role.ENGINEERING: ["Eve Engineer"],
    Role.DEVOPS: ["Dev Ops"],
    Role.SECURITY: ["Sam Security"],
    Role.PRODUCT: ["Pat Product"],
}


BLOCK_TYPES = [StagingEnvironment, DockerTarget, KubernetesTarget, ImageRegistry, PostgresDatabase, SlackChannel]


def sandbox_environment(secrets: dict[str, str]) -> StagingEnvironment:
    """The environment block for the sandbox, built from its fixed addresses and secrets."""
    return StagingEnvironment(
        kind="sandbox",
        app_repo=str(config.APP_REPO_DIR),
        api_url=config.API_URL,
        api_http_url=config.API_HTTP_URL,
        ca_bundle=str(config.CA_CERT),
        target=DockerTarget(
            docker_host=config.DOCKER_HOST,
            replicas=len(config.APP_REPLICA_PORTS),
            ports=list(config.APP_SLOT_PORTS),
            history_file=str(config.STATE_DIR / "docker-target" / "history.json"),
            labels={"architect.sandbox": "1"},
        ),
        builder_docker_host=config.DOCKER_HOST,
        registry=ImageRegistry(address=config.REGISTRY),
        database=PostgresDatabase(
            host=config.HOST,
            port=config.PG_PRIMARY_PORT,
            replica_host=config.HOST,
            replica_port=config.PG_REPLICA_PORT,
            dbname=config.PG_DATABASE,
            user=config.PG_USER,
            password=secrets["architect_db_password"],
            sslmode="disable",  # loopback only; a real staging database sets require
            backup_storage=LocalFileSystem(basepath=str(config.STATE_DIR / "backups")),
        ),
        prometheus_url=config.PROMETHEUS_URL,
        slack=SlackChannel(bot_token=secrets["slack_bot_token"], channel="#staging-deploys", api_url=config.SLACK_API_URL),
        performance=PerformanceTargets(),
        approvers=SANDBOX_APPROVERS,
        app_settings={
            "ENV": "staging",
            "REDIS_URL": config.redis_url(),
            "LOG_LEVEL": "info",
            "LOG_FORMAT": "json",
            "SESSION_TIMEOUT": "3600",
            "CORS_ALLOWED_ORIGINS": "https://dashboard.architect.localhost",
            # A stopping replica first answers 503 on /health and drops keep-alives for a
            # second, so nginx stops reusing its connections before it closes them.
            "SHUTDOWN_DELAY": "1",
        },
        app_secrets=SecretDict({"JWT_SECRET": secrets["jwt_secret"], "ENCRYPTION_KEY": secrets["encryption_key"]}),
        smoke_user="smoke",
        smoke_password=secrets["smoke_password"],
        # heavy (1,000 req/s) needs more cores than the sandbox shares between nginx, three
        # replicas and the generator: it would be judged "inconclusive: generator saturated".
        load_profiles=["light", "medium"],
        rollout_timeout_s=180,
        health_timeout_s=30,
    )


def save_sandbox_environment() -> StagingEnvironment:
    for block_type in BLOCK_TYPES:
        block_type.register_type_and_schema()
    environment = sandbox_environment(config.ensure_secrets())
    environment.save(SANDBOX, overwrite=True)
    return environment


if __name__ == "__main__":
    save_sandbox_environment()
    print(f"saved the {SANDBOX!r} environment block and registered the project's block types")
