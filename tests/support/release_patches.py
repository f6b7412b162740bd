"""The files a release patch (sandbox/releases/*.patch) adds, read without applying it."""

from __future__ import annotations

from pathlib import Path

RELEASES = Path(__file__).resolve().parents[2] / "sandbox" / "releases"


def added_files(patch: str) -> dict[str, str]:
    """``path -> content`` of every file the patch creates (``--- /dev/null``)."""
    files: dict[str, str] = {}
    lines = (RELEASES / patch).read_text().splitlines()
    for i, line in enumerate(lines):
        if line == "--- /dev/null" and i + 1 < len(lines) and lines[i + 1].startswith("+++ b/"):
            path, body = lines[i + 1].removeprefix("+++ b/"), []
            for hunk_line in lines[i + 2 :]:
                if hunk_line.startswith("diff --git"):
                    break
                if hunk_line.startswith("+"):
                    body.append(hunk_line[1:])
            files[path] = "\n".join(body) + "\n"
    return files
