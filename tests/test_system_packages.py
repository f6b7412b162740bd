"""Every program the project starts is installed by something it declares (issue 12).

The programs come from reading the source (tests/support/programs.py: subprocess and Docker
calls, the project's own wrappers of them, the sandbox's daemons) and from the declarations there
for shell scripts and documentation. Each must resolve to a package of system-packages.txt (or
one a listed package needs), to a file the list says the base image ships, or to a Python
distribution of pyproject.toml. A program nothing installs fails here, not on a fresh machine.
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from deployments.system_packages import read_list
from tests.support import programs
from tests.support.programs import Site

pytestmark = pytest.mark.unit

PYPROJECT = programs.REPO_ROOT / "pyproject.toml"

# Programs the scanner must find: if one goes missing, the scanner went blind, not the code clean.
WELL_KNOWN = {
    "go",
    "git",
    "pg_dump",
    "pg_restore",
    "psql",
    "initdb",
    "pg_ctl",
    "pg_basebackup",
    "runuser",
    "nginx",
    "prometheus",
    "promtool",
    "redis-server",
    "docker-registry",
    "dockerd",
    "kubectl",
    "chromium",
    "wrk",
    "hey",
    "mount",
    "umount",
    "bash",
}
# Installed on the base image, needed by no listed package: the first one present is the example
# of a real program whose package the list does not account for.
OUTSIDE_THE_LIST = ("curl", "wget", "gpg", "jq", "unzip", "less")


@pytest.fixture(scope="module")
def scanned() -> programs.Scan:
    return programs.scan()


@pytest.fixture(scope="module")
def started(scanned: programs.Scan) -> dict[str, set[Site]]:
    """Everything the project starts: the scan and the hand-made declarations together."""
    found = {name: set(sites) for name, sites in scanned.programs.items()}
    for name, sites in programs.declared()[0].items():
        found.setdefault(name, set()).update(sites)
    return found


def _where(sites: set[Site], limit: int = 5) -> str:
    shown = ", ".join(map(str, sorted(sites)[:limit]))
    return shown + (f" and {len(sites) - limit} more" if len(sites) > limit else "")


def test_every_program_the_project_starts_is_installed_by_the_list(started: dict[str, set[Site]]) -> None:
    verdicts = programs.check(started, read_list(), PYPROJECT)
    refused = [verdicts[name] for name in sorted(verdicts) if not verdicts[name].accepted]
    if refused:
        pytest.fail(
            "programs the project starts that nothing it declares installs (add the package to "
            "system-packages.txt, with its origin and why):\n"
            + "\n".join(f"  {v}\n      started at {_where(started[v.program])}" for v in refused),
            pytrace=False,
        )


def test_the_scanner_understands_every_launch(scanned: programs.Scan) -> None:
    if scanned.unresolved:
        pytest.fail(
            "launches whose program the scanner cannot work out; write argv[0] so it can be read (a literal, "
            "a module constant, a function returning a list), or declare the program in "
            "tests/support/programs.py:\n" + "\n".join(f"  {u}" for u in scanned.unresolved),
            pytrace=False,
        )


def test_the_declared_programs_are_still_where_they_are_declared() -> None:
    _, stale = programs.declared()
    assert not stale, "stale declarations in tests/support/programs.py:\n" + "\n".join(f"  {s}" for s in stale)


def test_the_scanner_finds_the_programs_everyone_knows_the_project_starts(scanned: programs.Scan) -> None:
    missing = WELL_KNOWN - scanned.programs.keys()
    assert not missing, f"the scanner no longer finds {sorted(missing)}; found {sorted(scanned.programs)}"
    # Through the wrappers: runuser's own argv (sandbox/postgres.py) and a Daemon's argv lambda.
    assert any(site.path.startswith("sandbox/") for site in scanned.programs["initdb"])
    assert any(site.path.startswith("sandbox/") for site in scanned.programs["redis-server"])


SYNTHETIC = textwrap.dedent("""\
    import subprocess


    def _go(args):
        return subprocess.run(args, check=True)


    def _quietly(argv):
        return _go(argv)  # a wrapper of a wrapper


    def main():
        subprocess.run(["cowsay", "hi"])
        _go(["figlet", "-f", "big", "hello"])
        _quietly(["lolcat"])
""")


def test_a_program_nothing_installs_is_found_and_refused(tmp_path: Path) -> None:
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "synthetic.py").write_text(SYNTHETIC)

    found = programs.scan(tmp_path, dirs=("tasks",))

    assert not found.unresolved, found.unresolved
    assert found.programs == {
        "cowsay": {Site("tasks/synthetic.py", 13)},
        "figlet": {Site("tasks/synthetic.py", 14)},
        "lolcat": {Site("tasks/synthetic.py", 15)},
    }
    verdicts = programs.check(found.programs, read_list(), PYPROJECT)
    for name in ("cowsay", "figlet", "lolcat"):
        assert not verdicts[name].accepted and verdicts[name].why.startswith("not installed"), verdicts[name]


def test_an_installed_program_whose_package_is_not_listed_is_refused() -> None:
    listed = {entry.name for entry in read_list()}
    paths = {name: path for name in OUTSIDE_THE_LIST if (path := shutil.which(name))}
    owners = programs.dpkg_owners(paths.values())
    outside = [name for name, path in paths.items() if owners.get(path) and not set(owners[path]) & listed]
    assert outside, f"none of {OUTSIDE_THE_LIST} is installed from a package outside the list: pick another example"

    verdict = programs.check([outside[0]], read_list(), PYPROJECT)[outside[0]]

    assert not verdict.accepted, f"{verdict} (if a listed package now needs it, pick another example)"
    assert verdict.owner and verdict.owner in str(verdict) and "not in system-packages.txt" in verdict.why


def test_every_entry_of_the_list_is_a_real_package_or_file() -> None:
    entries = read_list()
    wanted = sorted(e.name for e in entries if not e.is_file)
    shown = subprocess.run(
        ["apt-cache", "show", "--no-all-versions", *wanted], capture_output=True, text=True, check=False
    ).stdout
    known = {line.split(":", 1)[1].strip() for line in shown.splitlines() if line.startswith("Package:")}
    installed = programs.DebianPackages.read().installed
    unknown = [name for name in wanted if name not in known and name not in installed]
    assert not unknown, f"not Debian package names (apt-cache show, dpkg): {unknown}"

    base_missing = [
        e.name
        for e in entries
        if e.origin == "base" and not (Path(e.name).exists() if e.is_file else e.name in installed)
    ]
    assert not base_missing, f"the base image should ship these, and this machine lacks them: {base_missing}"


def test_the_list_parser_refuses_a_line_whose_origin_is_not_base_or_install(tmp_path: Path) -> None:
    bad = tmp_path / "packages.txt"
    bad.write_text("# a comment\ngit  base  fine\nnginx  maybe  nobody decided\n")

    with pytest.raises(ValueError, match=r"packages\.txt:3: .*'nginx  maybe  nobody decided'"):
        read_list(bad)
