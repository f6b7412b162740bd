"""A release of the app that the sandbox's app repository may not have yet, deployed from a copy.

``make_app_repo.sh`` tags the releases it lists. A test whose release is not (yet) among them
clones the app repository, makes the release there the way the script does (a branch off
``v3.2.0``, ``git apply`` of ``sandbox/releases/<tag>.patch``, fixed author and dates, a tag) and
deploys through a copy of the environment block whose ``app_repo`` is that clone.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sandbox import config
from tests.support.blocks import saved_environment
from tests.support.release_patches import RELEASES

_GIT = [
    "git",
    "-c",
    "user.name=Architect Release Bot",
    "-c",
    "user.email=release-bot@architect.localhost",
    "-c",
    "commit.gpgsign=false",
    "-c",
    "tag.gpgsign=false",
]
_DATE = "2024-02-16T11:00:00+00:00"


def _git(repo: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_DATE": _DATE, "GIT_COMMITTER_DATE": _DATE, "PATH": "/usr/bin:/bin", "HOME": str(repo)}
    return subprocess.run([*_GIT, "-C", str(repo), *args], env=env, check=True, capture_output=True, text=True).stdout


def has_tag(repo: Path, tag: str) -> bool:
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "-q", "--verify", f"refs/tags/{tag}"]).returncode == 0


def repo_with_release(tag: str, dest: Path) -> Path:
    """A clone of the sandbox's app repository at ``dest`` that has ``tag``."""
    subprocess.run(["git", "clone", "--quiet", str(config.APP_REPO_DIR), str(dest)], check=True)
    if not has_tag(dest, tag):
        _git(dest, "checkout", "-q", "-b", f"release/{tag}", "v3.2.0")
        _git(dest, "apply", "--index", str(RELEASES / f"{tag}.patch"))
        _git(dest, "commit", "-q", "-m", f"Release {tag.removeprefix('v')}")
        _git(dest, "tag", "-a", tag, "-m", f"architect-api {tag.removeprefix('v')}")
        _git(dest, "checkout", "-q", "main")
    return dest


@contextmanager
def environment_for_release(sandbox_env, tag: str, workdir: Path) -> Iterator[str]:
    """The name of an environment that can deploy ``tag``: ``sandbox`` when its repository has
    the tag, else a saved copy (``test-…``) whose app repository is a clone that has it."""
    if has_tag(config.APP_REPO_DIR, tag):
        yield "sandbox"
        return
    repo = repo_with_release(tag, workdir / "app-repo")
    with saved_environment(sandbox_env, app_repo=str(repo)) as name:
        yield name
