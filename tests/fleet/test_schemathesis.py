"""Schemathesis against the app's own OpenAPI spec (in process, ASGI).

For every operation it generates requests from the spec — valid ones and deliberately
invalid ones — and checks that the app never answers 5xx, that invalid input is
rejected, and that every response matches the documented status codes, content types
and schemas. Examples per operation are few so the suite stays fast; it runs on both
backends (they reject different bad values, e.g. NUL characters on PostgreSQL).
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from fleet.models.auth import Role

EXAMPLES = {GenerationMode.POSITIVE: 4, GenerationMode.NEGATIVE: 2}
#: Field rules JSON Schema cannot state (a per-field ``value_error`` is expected there).
RULES_BEYOND_JSON_SCHEMA = {
    "POST /api/v1/rollouts": {"body.waves"},  # waves must increase and end at 100
}


def _field_level_rejection(response: Any, label: str) -> list[str]:
    """Fields a 422 blames, other than the body as a whole.

    Schemathesis's own "schema-valid request accepted" check also fails on 409/422 that
    business rules give for valid input (a name already taken, a reference to a model
    that does not exist). What must never happen is a *field* refused although the
    spec allowed its value: that means the spec and the validators disagree.
    Cross-field rules (a model validator) blame ``body`` and are allowed.
    """
    if response.status_code != 422:
        return []
    errors = response.json().get("errors") or []
    allowed = RULES_BEYOND_JSON_SCHEMA.get(label, set()) | {"body"}
    return [e["field"] for e in errors if e["field"] not in allowed]


def _fuzz(operation: Any, mode: GenerationMode, examples: int, auth: dict[str, str]) -> None:
    """Run ``examples`` generated requests against one operation; raise on any failure."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # report the first failure, do not shrink
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        response = case.call(headers=auth)
        case.validate_response(response, headers=auth, excluded_checks=[positive_data_acceptance])
        if mode is GenerationMode.POSITIVE:
            blamed = _field_level_rejection(response, operation.label)
            assert not blamed, f"schema-valid value refused for {blamed}: {response.text[:300]}"

    check()


@pytest.mark.slow
def test_api_conforms_to_its_spec_and_never_fails(backend: Any, new_token: Any) -> None:
    # Prepare: the app's own spec, and an admin token so every operation is reachable.
    auth = {"Authorization": f"Bearer {new_token(backend.engine, Role.admin, name='fuzzer')}"}
    api = schemathesis.openapi.from_asgi("/openapi.json", backend.client.app, headers=auth)
    failures: list[str] = []
    operations = 0
    # Execute: each operation, each generation mode.
    for result in api.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode, examples in EXAMPLES.items():
            try:
                _fuzz(operation, mode, examples, auth)
            except Unsatisfiable:
                continue  # nothing to make invalid (no parameters, no body)
            except Exception as exc:  # collect all (ExceptionGroups too), report at the end
                failures.append(f"{operation.label} [{mode.value}]: {exc}")
    # Assert
    assert operations >= 30
    assert not failures, "\n\n".join(failures)
