"""docs/security.md is a contract: every guarantee row names tests, and each named test exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "security.md"
TEST_REF = re.compile(r"`(tests/[\w/]+\.py)::(test_\w+)`")


def _guarantee_rows(text: str) -> list[str]:
    """Rows of every table whose header has a test column ("test" or "shown by")."""
    rows: list[str] = []
    header: str | None = None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        if header is None:
            header = line
            continue
        if set(line) <= set("|-: "):
            continue
        if re.search(r"\|\s*(test|shown by)\b", header, re.I):
            rows.append(line)
    return rows


def test_every_test_the_threat_model_names_exists():
    # Prepare
    refs = TEST_REF.findall(DOC.read_text())
    assert len(refs) > 50, "the threat model should name the tests behind its rows"
    # Execute
    missing = [
        f"{path}::{name}"
        for path, name in refs
        if not (ROOT / path).is_file()
        or not re.search(rf"^(async )?def {name}\(", (ROOT / path).read_text(), re.M)
    ]
    # Assert
    assert not missing, "docs/security.md names tests that do not exist:\n" + "\n".join(missing)


def test_every_guarantee_row_names_a_test_or_says_it_is_not_enforced():
    rows = _guarantee_rows(DOC.read_text())
    assert len(rows) > 30
    # A guarantee names a test; a row that nothing enforces says so plainly (and the
    # section "Known limits" explains it).
    unbacked = [
        r for r in rows if "`tests/" not in r and not re.search(r"none today|not enforced", r, re.I)
    ]
    assert not unbacked, "rows without a test:\n" + "\n".join(unbacked)
