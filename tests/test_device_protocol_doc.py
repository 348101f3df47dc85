"""docs/device-protocol.md: every JSON example validates against the schema it names and
(for messages) decodes with the codec; every schema file is linked from the doc."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest

from edge_client.protocol import mqtt as proto
from edge_client.protocol import schemas

DOC = Path(__file__).resolve().parents[1] / "docs" / "device-protocol.md"
_EXAMPLE = re.compile(r"<!-- schema: ([a-z-]+) -->\n```json\n(.*?)\n```", re.S)


def _examples() -> list[tuple[str, str]]:
    return _EXAMPLE.findall(DOC.read_text(encoding="utf-8"))


def test_every_json_block_of_the_doc_names_its_schema() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert text.count("```json") == len(_examples()) >= 10


@pytest.mark.parametrize(("name", "body"), _examples())
def test_each_doc_example_validates_and_decodes(name: str, body: str) -> None:
    doc = json.loads(body)
    jsonschema.Draft202012Validator(schemas.schema(name)).validate(doc)
    if name in schemas.MESSAGES:
        channel = next(c for c, m in schemas.CHANNEL_MESSAGE.items() if m == name)
        proto.decode(json.dumps(doc).encode(), channel=channel)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", schemas.DOCUMENTS)
def test_every_schema_is_linked_from_the_doc(name: str) -> None:
    assert f"(../edge_client/protocol/schemas/v2/{name}.json)" in DOC.read_text(encoding="utf-8")
