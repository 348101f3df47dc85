"""docs/policies.md is a contract: its full example parses, and its table of keys names
every key the parser reads."""

from __future__ import annotations

import re
from pathlib import Path

from fleet.policy import Policy, parse_policy

DOC = Path(__file__).resolve().parents[2] / "docs" / "policies.md"


def _example() -> str:
    blocks = re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 1, "docs/policies.md should hold one full TOML example"
    return blocks[0]


def test_the_full_example_of_the_docs_parses() -> None:
    policy = parse_policy(_example(), source="docs/policies.md")
    assert policy.group == "ward-3" and policy.targets == ("rpi5", "cpu-x86")
    assert policy.canary.waves == (1, 10, 50, 100) and policy.signing.mode == "key"
    assert policy.retrain.enabled and policy.retrain.max_runs_per_day == 2


def test_the_key_table_names_every_key_of_the_format() -> None:
    document = parse_policy(_example()).to_document()
    keys = {"group", "targets"}
    for table in ("gates", "canary", "retrain"):
        keys |= {f"{table}.{k}" for k in document[table]}
    table_rows = set(re.findall(r"^\| `([a-z_.]+)`", DOC.read_text(), re.M))
    assert keys <= table_rows, keys - table_rows
    assert isinstance(parse_policy(_example()), Policy)
