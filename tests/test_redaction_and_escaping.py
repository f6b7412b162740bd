"""The redactor and the escapers: properties over generated text, no sandbox."""

from __future__ import annotations

import base64
import re
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, SecretStr

from tasks.core.escaping import for_markdown, for_slack, for_slack_once
from tasks.core.redaction import MASK, MIN_SECRET_LENGTH, Redactor, secrets_of

pytestmark = pytest.mark.unit

secrets = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=MIN_SECRET_LENGTH, max_size=40)
noise = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)


@given(secret=secrets, before=noise, after=noise)
def test_a_secret_is_gone_in_every_form_it_is_written(secret, before, after):
    redact = Redactor([secret])
    for form in (secret, quote(secret, safe=""), quote_plus(secret), base64.b64encode(secret.encode()).decode()):
        out = redact(f"{before}{form}{after}")
        assert form not in out, (form, out)
        assert MASK in out


@given(secret=secrets, prefix=st.binary(max_size=5), suffix=st.binary(max_size=5))
def test_a_secret_inside_a_longer_base64_string_is_gone(secret, prefix, suffix):
    # e.g. "Authorization: Basic base64(user:password)": the secret sits at any byte offset.
    encoded = base64.b64encode(prefix + secret.encode() + suffix).decode()
    out = Redactor([secret])(encoded)
    assert MASK in out
    assert len(out.replace(MASK, "")) < len(encoded)


@given(
    user=st.from_regex(r"[a-z]{1,8}", fullmatch=True), password=st.from_regex(r"[A-Za-z0-9!%*]{1,20}", fullmatch=True)
)
def test_the_password_of_any_url_with_userinfo_is_gone(user, password):
    out = Redactor()(f"dial postgresql://{user}:{password}@db.example:5432/app failed")
    assert f":{password}@" not in out
    assert f"postgresql://{user}:{MASK}@db.example:5432/app" in out


def test_short_values_are_not_treated_as_secrets_and_text_without_secrets_is_unchanged():
    assert Redactor(["abc"])("abc abc") == "abc abc"
    assert Redactor(["long-secret"])("nothing here") == "nothing here"


def test_secrets_are_collected_from_nested_models():
    class Inner(BaseModel):
        password: SecretStr
        host: str = "db"

    class Outer(BaseModel):
        token: SecretStr
        inner: Inner
        extra: dict[str, SecretStr] = {}

    model = Outer(
        token=SecretStr("tok-123456"), inner=Inner(password=SecretStr("pw-abcdef")), extra={"k": SecretStr("xyz-98765")}
    )
    assert secrets_of(model) == {"tok-123456", "pw-abcdef", "xyz-98765"}


MENTION_OR_LINK = re.compile(r"<[!@#]|<[a-z]+://|<[^>]*\|[^>]*>")


@given(st.text())
def test_slack_text_can_never_mention_or_link(text):
    out = for_slack(text)
    assert "<" not in out and ">" not in out
    assert not MENTION_OR_LINK.search(out)


@given(st.text())
def test_slack_escaping_keeps_the_text_readable(text):
    unescaped = for_slack(text).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    assert unescaped == re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "", text)


def _cells(row: str) -> list[str]:
    """Split a markdown table row as GitHub-flavoured markdown does: on pipes not escaped."""
    return re.split(r"(?<!\\)\|", row.strip().strip("|"))


@given(st.lists(st.text(), min_size=1, max_size=4))
def test_markdown_cells_never_break_the_row_or_start_a_heading(values):
    row = "| " + " | ".join(for_markdown(v) for v in values) + " |"
    assert "\n" not in row and "\r" not in row
    assert len(_cells(row)) == len(values)
    for value in values:
        line = for_markdown(value)
        assert not line.lstrip().startswith("#")
        assert "<" not in line


RUN_URL = "http://127.0.0.1:4200/runs/flow-run/1f2e"
RUN_LINK = f"<{RUN_URL}|Open the run>"


PIECES = st.sampled_from(["<", ">", "&", "|", "!channel", "@U1", "#C1", "https://x", "amp;", "lt;", RUN_LINK])


@given(st.lists(PIECES | st.text(), max_size=12).map("".join))
def test_the_notifiers_escaping_leaves_no_mention_or_link_but_the_runs_own(text):
    """The notifier's one escaping point (``for_slack_once``): whatever a reason or a note holds,
    including text a caller escaped already, no ``<`` survives except in the run's own link."""
    out = for_slack_once(text, keep_links=(RUN_URL,))
    rest = out.replace(RUN_LINK, "")
    assert "<" not in rest and ">" not in rest
    assert not MENTION_OR_LINK.search(rest)
    assert for_slack_once(out, keep_links=(RUN_URL,)) == out  # escaping again changes nothing


@given(st.text())
def test_escaping_once_reads_like_escaping_plain_text_without_entities(text):
    if "&amp;" in text or "&lt;" in text or "&gt;" in text:
        return
    assert for_slack_once(text) == for_slack(text)
