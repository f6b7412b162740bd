"""Terminal sign-offs: ``ssh-keygen -Y sign`` over the statement, ``ssh-keygen -Y verify`` in the flow.

The signature's namespace is this project's (``architect-signoff``), so a signature made for git,
for a file or for another tool never verifies here. The flow verifies against the allowed
signers of the one role being signed, with ``-I`` naming the principal, so a key listed for
another role, or for nobody, never counts.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

from blocks.approvers import Approver, parse_allowed_signer
from tasks.core.errors import SshSignatureError
from tasks.signoff.statement import NAMESPACE

SSH_KEYGEN = "ssh-keygen"
ARMORED = re.compile(r"-----BEGIN SSH SIGNATURE-----\n[A-Za-z0-9+/=\n]{40,8000}-----END SSH SIGNATURE-----\n?")
TIMEOUT_S = 20


def looks_like_ssh_signature(text: str) -> bool:
    return text.lstrip().startswith("-----BEGIN SSH SIGNATURE-----")


def _ssh_keygen(args: list[str], stdin: str) -> subprocess.CompletedProcess:
    # A bare environment: ssh-keygen needs none, and SSH_AUTH_SOCK is passed only where it signs.
    return subprocess.run(
        [SSH_KEYGEN, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
        env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
    )


def sign_statement(key: Path, statement: str, agent_socket: str | None = None) -> str:
    """The armored signature of ``statement`` by the private key at ``key`` (or its .pub with an agent)."""
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", **({"SSH_AUTH_SOCK": agent_socket} if agent_socket else {})}
    done = subprocess.run(
        [SSH_KEYGEN, "-q", "-Y", "sign", "-f", str(key), "-n", NAMESPACE],
        input=statement,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    if done.returncode or not ARMORED.fullmatch(done.stdout):
        why = done.stderr.strip()[-300:] or f"exit {done.returncode}"
        raise SshSignatureError(f"ssh-keygen -Y sign with {key} failed: {why}")
    return done.stdout


def verify_statement(statement: str, signature: str, leads: list[Approver]) -> tuple[Approver, str]:
    """The lead among ``leads`` whose key made ``signature`` over ``statement``, and the principal."""
    if not ARMORED.fullmatch(signature.strip() + "\n"):
        raise SshSignatureError("the proof is not an armored SSH signature")
    lines = [(lead, line) for lead in leads for line in lead.ssh_allowed_signers]
    if not lines:
        raise SshSignatureError("no lead of this role has an SSH key listed")
    with tempfile.TemporaryDirectory(prefix="signoff-verify-") as tmp:
        allowed, sig = Path(tmp) / "allowed_signers", Path(tmp) / "statement.sig"
        allowed.write_text("".join(f"{line}\n" for _, line in lines))
        sig.write_text(signature.strip() + "\n")
        found = _ssh_keygen(["-Y", "find-principals", "-s", str(sig), "-f", str(allowed)], "")
        principals = found.stdout.split() if found.returncode == 0 else []
        if not principals:
            raise SshSignatureError("the signature is not made with a key this role lists")
        for principal in principals:
            checked = _ssh_keygen(
                ["-Y", "verify", "-f", str(allowed), "-I", principal, "-n", NAMESPACE, "-s", str(sig)], statement
            )
            if checked.returncode == 0:
                lead = next(lead for lead, line in lines if parse_allowed_signer(line)[0] == principal)
                return lead, principal
    raise SshSignatureError(
        "the signature does not verify over this run's statement (another run, role, "
        "decision, image, evidence or notes)"
    )


def public_key_of(key: Path) -> str:
    """``keytype base64`` of a key file (the .pub beside it, or derived from the private key)."""
    pub = key if key.suffix == ".pub" else key.with_name(key.name + ".pub")
    if pub.exists():
        fields = pub.read_text().split()
    else:
        done = _ssh_keygen(["-y", "-f", str(key)], "")
        if done.returncode:
            raise SshSignatureError(f"cannot read the public key of {key}: {done.stderr.strip()[-200:]}")
        fields = done.stdout.split()
    if len(fields) < 2:
        raise SshSignatureError(f"{pub} is not an SSH public key")
    return f"{fields[0]} {fields[1]}"
