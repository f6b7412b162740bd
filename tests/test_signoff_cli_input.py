"""Property tests: `architect-signoff sign` refuses bad input, says which, and resumes nothing.

One test flow (tests/support/signoff.py) waits for sign-off for the whole module; every example
throws one bad argument at the CLI and then checks that the run is still paused under the same
key with nobody signed. Arguments the CLI's parser refuses (exit 2) never reach the server;
the others are refused against the run's ledger (the role's SSH keys and the rules) or by the
server's check of the form (exit 1). Each example signs with the role's real key: only the bad
argument is wrong.
"""

from __future__ import annotations

import contextlib
import io
import string
import uuid

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from deployments import signoff_cli
from tests.support.signoff import KEYS, LEADS, SignoffRun, signoff_environment

pytestmark = pytest.mark.sandbox

ROLES = list(LEADS)
DECISIONS = ["approve", "reject"]
SHELL_METACHARACTERS = ";|&$`<>(){}[]*?!\\\"' \n\t~#"
CONTROL_CHARACTERS = [chr(c) for c in (*range(0x00, 0x20), 0x7F)]


def _norm(name: str) -> str:
    return " ".join(name.split()).casefold()


@pytest.fixture(scope="module")
def waiting_run(sandbox_up, sandbox_env):
    names = []

    def copy(**changes) -> str:  # the module-wide twin of conftest's environment_copy
        env = sandbox_env.model_copy(update=changes)
        env._block_document_id = env._block_document_name = None
        names.append(f"test-{uuid.uuid4().hex[:8]}")
        env.save(names[-1], overwrite=True)
        return names[-1]

    run = SignoffRun(timeout_s=600, environment=signoff_environment(copy)).start()
    run.wait_paused()
    yield run
    run.close()
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for name in names:
            client.delete_block_document(client.read_block_document_by_name(name, "architect-staging-environment").id)


def cli(*argv: str) -> tuple[int, str, str]:
    """Run the CLI in this process: (exit code, stdout, stderr); argparse's exit 2 included."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = signoff_cli.main(list(argv))
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def sign(
    run_id: str, role: str = "security", name: str = "Sam Security", decision: str = "approve", notes: str = "checked"
) -> tuple[int, str, str]:
    # --opt=value: a value that starts with '-' is still the option's value, not an option.
    key = KEYS.get(role, KEYS["security"])
    return cli(
        "sign",
        run_id,
        f"--role={role}",
        f"--name={name}",
        f"--decision={decision}",
        f"--notes={notes}",
        f"--key={key}",
        "--wait=1",
    )


def assert_nothing_changed(run: SignoffRun, key: str) -> None:
    assert run.pause_key() == key, "a refused sign-off resumed the run"
    assert run.ledger().signed == [], "a refused sign-off was recorded"


def _not_a_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return True
    return False


bad_run_ids = st.one_of(
    st.text(max_size=60),
    st.builds(
        lambda depth, rest: "../" * depth + rest, st.integers(1, 6), st.text(string.ascii_lowercase, max_size=10)
    ),
    st.builds(lambda u, meta: str(u)[:18] + meta + str(u)[18:], st.uuids(), st.sampled_from(SHELL_METACHARACTERS)),
    st.builds(lambda u, tail: str(u) + tail, st.uuids(), st.text(min_size=1, max_size=20)),
    st.text(string.hexdigits, min_size=33, max_size=5000),  # oversized
).filter(lambda s: s and not s.startswith("-") and _not_a_uuid(s))


@settings(max_examples=60, deadline=None)
@given(run_id=bad_run_ids, command=st.sampled_from(["sign", "show"]))
@example(run_id="../../etc/passwd", command="sign")
@example(run_id="$(touch /tmp/pwned)", command="sign")
def test_a_run_id_that_is_not_a_uuid_is_refused_by_the_parser(waiting_run, run_id, command):
    key = waiting_run.pause_key()
    if command == "sign":
        code, _, err = sign(run_id)
    else:
        code, _, err = cli("show", run_id)
    assert code == 2
    assert "argument run_id: invalid UUID value" in err
    assert_nothing_changed(waiting_run, key)


@settings(max_examples=10, deadline=None)
@given(st.uuids())
def test_a_run_id_of_no_run_is_refused(waiting_run, run_id):
    key = waiting_run.pause_key()
    code, _, err = sign(str(run_id))
    assert code == 1 and f"No flow run {run_id}" in err
    assert_nothing_changed(waiting_run, key)


@settings(max_examples=40, deadline=None)
@given(field=st.sampled_from(["role", "decision"]), value=st.text(max_size=40))
@example(field="role", value="admin")
@example(field="decision", value="approve; rm -rf /")
def test_roles_and_decisions_outside_the_choices_are_refused_by_the_parser(waiting_run, field, value):
    if value in (ROLES if field == "role" else DECISIONS):
        return
    key = waiting_run.pause_key()
    code, _, err = sign(str(waiting_run.id), **{field: value})
    assert code == 2
    assert f"argument --{field}: invalid choice" in err
    assert_nothing_changed(waiting_run, key)


bad_names = st.one_of(
    st.text(alphabet=" \t\n\r\x0b\x0c", max_size=5),  # empty or blank
    st.text(string.ascii_letters + " ", min_size=101, max_size=5000),  # oversized
    st.builds(
        lambda name, c: name[:3] + c + name[3:],
        st.sampled_from(list(LEADS.values())),
        st.sampled_from(CONTROL_CHARACTERS),
    ),
    st.builds(
        lambda name, meta: name + meta, st.sampled_from(list(LEADS.values())), st.sampled_from(SHELL_METACHARACTERS)
    ),
    st.text(max_size=60),  # anyone else
)


@settings(max_examples=25, deadline=None)
@given(role=st.sampled_from(ROLES), name=bad_names)
@example(role="security", name="")
@example(role="security", name="Eve Engineer")  # listed, but for another role
@example(role="security", name="Sam\x00Security")
def test_names_the_environment_does_not_list_for_the_role_are_refused(waiting_run, role, name):
    if _norm(name) == _norm(LEADS[role]):
        return  # whitespace aside, the listed name: a valid sign-off
    key = waiting_run.pause_key()
    code, _, err = sign(str(waiting_run.id), role=role, name=name)
    assert code != 0
    if code == 2:  # refused by the parser
        assert "argument --name" in err
    else:
        assert code == 1 and f"may not sign for {role}" in err and "The run keeps waiting" in err, err
    assert_nothing_changed(waiting_run, key)


@settings(max_examples=10, deadline=None)
@given(role=st.sampled_from(ROLES), notes=st.text(min_size=2001, max_size=20_000))
def test_oversized_notes_are_refused(waiting_run, role, notes):
    key = waiting_run.pause_key()
    code, _, err = sign(str(waiting_run.id), role=role, name=LEADS[role], notes=notes)
    assert code != 0
    assert "argument --notes" in err or "Validation failed for field 'notes'" in err, err[:300]
    assert_nothing_changed(waiting_run, key)


@settings(max_examples=12, deadline=None)
@given(role=st.sampled_from(ROLES), signer=st.sampled_from(ROLES))
def test_keys_the_environment_does_not_list_for_the_role_are_refused(waiting_run, role, signer):
    if role == signer:
        return  # the role's own lead: a valid sign-off
    key = waiting_run.pause_key()
    code, _, err = cli(
        "sign", str(waiting_run.id), f"--role={role}", "--decision=approve", f"--key={KEYS[signer]}", "--wait=1"
    )
    assert code == 1 and f"may not sign for {role}" in err and "The run keeps waiting" in err, err
    assert_nothing_changed(waiting_run, key)


@settings(max_examples=10, deadline=None)
@given(
    role=st.sampled_from(ROLES),
    control=st.sampled_from(
        ["<!channel>", "<!here|here>", "<@U0SAMSEC>", "<#C0DEPLOYS>", "<https://evil.example|docs>"]
    ),
)
def test_notes_with_slack_control_sequences_are_refused(waiting_run, role, control):
    key = waiting_run.pause_key()
    code, _, err = sign(str(waiting_run.id), role=role, name=LEADS[role], notes=f"ship it {control}")
    assert code == 1 and "Slack control sequence" in err, err
    assert_nothing_changed(waiting_run, key)
