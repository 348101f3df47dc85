"""The fleet client's boundary checks (no network): URL, token, version numbers."""

from __future__ import annotations

import pytest

from fleet.client import (
    DEFAULT_URL,
    FleetError,
    connection_from_env,
    parse_model_version,
)

SECRET = "ff_secret-token-value"


def test_url_comes_from_the_argument_then_the_environment_then_the_default() -> None:
    env = {"FEDFLEET_TOKEN": SECRET, "FEDFLEET_URL": "http://fleet.local:9000/"}
    assert connection_from_env("https://a.example/api/v1", env).url == "https://a.example"
    assert connection_from_env(None, env).url == "http://fleet.local:9000"
    assert connection_from_env(None, {"FEDFLEET_TOKEN": SECRET}).url == DEFAULT_URL


def test_the_token_is_read_from_the_environment_only_and_never_shown() -> None:
    connection = connection_from_env(None, {"FEDFLEET_TOKEN": f"  {SECRET}\n"})
    assert connection.token == SECRET
    assert SECRET not in repr(connection) and SECRET not in str(connection)
    for env in ({}, {"FEDFLEET_TOKEN": "   "}):
        with pytest.raises(
            FleetError, match=r"\$FEDFLEET_TOKEN is not set; `export FEDFLEET_TOKEN"
        ):
            connection_from_env(None, env)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://fleet:21", "is not an http"),
        ("fleet.local:8080", "is not an http"),
        ("http://", "is not an http"),
        ("http://user:pw@fleet:8080", "drop the user"),
        ("http://fleet:8080/?token=x", "drop the user, query"),
    ],
)
def test_bad_urls_are_refused_with_the_fix(url: str, message: str) -> None:
    with pytest.raises(FleetError, match=message):
        connection_from_env(url, {"FEDFLEET_TOKEN": SECRET})


@pytest.mark.parametrize("raw", ["7", " 12 ", "2147483647"])
def test_model_versions_are_positive_numbers(raw: str) -> None:
    assert parse_model_version(raw) == int(raw)


@pytest.mark.parametrize("raw", ["0", "-1", "v7", "7.0", "", "2147483648", "１"])
def test_other_model_versions_are_refused(raw: str) -> None:
    with pytest.raises(FleetError, match="is not a model version number"):
        parse_model_version(raw)
