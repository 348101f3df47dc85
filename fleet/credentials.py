"""Secrets the fleet hands out: API tokens, dashboard sessions, device broker passwords.

All randomness comes from :mod:`secrets`. What the database keeps:

- API tokens and session ids: SHA-256 (hex). They carry 256 bits of entropy, so a fast
  hash is safe and lookups by hash stay O(1).
- Device broker passwords: Mosquitto's own ``$7$`` format (PBKDF2-HMAC-SHA512, 12-byte
  salt, 64-byte digest, base64), exactly what ``mosquitto_passwd -H sha512-pbkdf2``
  writes, so the broker password file is written from the table without the password.
  The passwords are 192-bit random strings, so the iteration count is not what keeps
  them safe; 1,000 iterations (Mosquitto's default is 101) keep a thousand devices
  reconnecting at once cheap for the broker.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

TOKEN_PREFIX = "ffk_"  # noqa: S105 - a public marker that makes leaked tokens greppable
SESSION_BYTES = 32
MQTT_PBKDF2_ITERATIONS = 1_000
_MQTT_SALT_BYTES = 12
_MQTT_DIGEST_BYTES = 64


def new_api_token() -> str:
    """A new bearer token: ``ffk_`` + 43 URL-safe characters (256 random bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """SHA-256 hex digest of a high-entropy secret (token or session id)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_session_secret() -> str:
    """A new dashboard session id (256 random bits)."""
    return secrets.token_urlsafe(SESSION_BYTES)


def csrf_token_for(session_secret: str) -> str:
    """The CSRF token bound to a session: only someone holding the cookie can compute it."""
    return hashlib.sha256(b"fedfleet-csrf\x00" + session_secret.encode("utf-8")).hexdigest()


def new_device_id() -> str:
    """A device id, also its MQTT username and topic segment: ``dev-`` + 16 hex digits."""
    return "dev-" + secrets.token_hex(8)


def new_mqtt_password() -> str:
    """A broker password (192 random bits, URL-safe characters)."""
    return secrets.token_urlsafe(24)


def mosquitto_hash(password: str, *, iterations: int = MQTT_PBKDF2_ITERATIONS) -> str:
    """Hash ``password`` in Mosquitto's ``$7$`` PBKDF2-SHA512 format.

    Returns ``$7$<iterations>$<base64 salt>$<base64 digest>``, the part after
    ``username:`` in a Mosquitto password file.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    salt = secrets.token_bytes(_MQTT_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac(
        "sha512", password.encode("utf-8"), salt, iterations, _MQTT_DIGEST_BYTES
    )
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_mosquitto_hash(password: str, encoded: str) -> bool:
    """True when ``password`` matches a ``$7$`` hash (constant-time comparison).

    Raises:
        ValueError: ``encoded`` is not a Mosquitto ``$7$`` hash.
    """
    parts = encoded.split("$")
    if len(parts) != 5 or parts[0] != "" or parts[1] != "7":
        raise ValueError("not a Mosquitto $7$ (PBKDF2-SHA512) hash")
    try:
        iterations = int(parts[2])
        salt = base64.b64decode(parts[3], validate=True)
        expected = base64.b64decode(parts[4], validate=True)
    except ValueError as exc:
        raise ValueError("malformed Mosquitto $7$ hash") from exc
    if iterations < 1:
        raise ValueError("malformed Mosquitto $7$ hash: iterations must be positive")
    actual = hashlib.pbkdf2_hmac(
        "sha512", password.encode("utf-8"), salt, iterations, len(expected)
    )
    return hmac.compare_digest(actual, expected)
