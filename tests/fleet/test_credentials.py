"""Secrets: API tokens, session ids, and Mosquitto-compatible device password hashes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet import credentials


def test_api_tokens_are_unique_prefixed_and_hash_to_sha256_hex() -> None:
    # Prepare / Execute
    tokens = {credentials.new_api_token() for _ in range(200)}
    # Assert
    assert len(tokens) == 200
    for token in tokens:
        assert token.startswith("ffk_")
        assert len(token) >= 40
        digest = credentials.hash_secret(token)
        assert len(digest) == 64 and int(digest, 16) >= 0
        assert token not in digest


def test_csrf_token_depends_on_the_session_secret() -> None:
    a, b = credentials.new_session_secret(), credentials.new_session_secret()
    assert credentials.csrf_token_for(a) == credentials.csrf_token_for(a)
    assert credentials.csrf_token_for(a) != credentials.csrf_token_for(b)


def test_device_ids_are_topic_safe() -> None:
    for _ in range(100):
        device_id = credentials.new_device_id()
        assert device_id.startswith("dev-") and len(device_id) == 20
        assert not set(device_id) & set("/+#$ ")


@settings(max_examples=25, deadline=None)
@given(password=st.text(min_size=1, max_size=64), other=st.text(min_size=1, max_size=64))
def test_mosquitto_hash_verifies_only_its_password(password: str, other: str) -> None:
    encoded = credentials.mosquitto_hash(password, iterations=10)
    assert credentials.verify_mosquitto_hash(password, encoded)
    if other != password:
        assert not credentials.verify_mosquitto_hash(other, encoded)


def test_mosquitto_hash_is_salted() -> None:
    assert credentials.mosquitto_hash("same") != credentials.mosquitto_hash("same")


@pytest.mark.parametrize(
    "bad",
    ["", "plain", "$6$abc$def", "$7$x$c2FsdA==$ZGln", "$7$0$c2FsdA==$ZGln", "$7$10$!!$ZGln"],
)
def test_malformed_hashes_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="Mosquitto"):
        credentials.verify_mosquitto_hash("pw", bad)


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd absent")
def test_oracle_mosquitto_passwd_hash_verifies_with_our_code(tmp_path: Path) -> None:
    # Prepare: let Mosquitto's own tool hash a password the way the broker will check it.
    password_file = tmp_path / "passwd"
    subprocess.run(
        [
            "mosquitto_passwd",
            "-c",
            "-b",
            "-H",
            "sha512-pbkdf2",
            "-I",
            "1000",
            str(password_file),
            "dev-0123456789abcdef",
            "s3cret-Pa55",
        ],
        check=True,
        capture_output=True,
    )
    username, encoded = password_file.read_text().strip().split(":", 1)
    # Execute / Assert: same format, same derivation.
    assert username == "dev-0123456789abcdef"
    assert encoded.startswith("$7$1000$")
    assert credentials.verify_mosquitto_hash("s3cret-Pa55", encoded)
    assert not credentials.verify_mosquitto_hash("wrong", encoded)
    ours = credentials.mosquitto_hash("s3cret-Pa55")
    assert ours.split("$")[:3] == ["", "7", str(credentials.MQTT_PBKDF2_ITERATIONS)]
    assert len(ours.split("$")[3]) == len(encoded.split("$")[3])  # 12-byte salt
    assert len(ours.split("$")[4]) == len(encoded.split("$")[4])  # 64-byte digest
