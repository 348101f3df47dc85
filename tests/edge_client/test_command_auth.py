"""Signed command envelopes: the fleet's signer against the device's check (unit and
property tests; the end-to-end attacks are in tests/e2e/test_ota_downgrade.py)."""

from __future__ import annotations

import dataclasses

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_client.command_auth import check_command
from edge_client.protocol import mqtt as proto
from fleet.ota.command_signing import CommandSigner

KEY = Ed25519PrivateKey.generate()
DEVICE = "dev-a"
NOW_MS = 1_800_000_000_000
ARTIFACT = proto.ArtifactRef(sha256="ab" * 32, size=10, chunk_size=10, chunk_sha256=("cd" * 32,))


def _signer() -> CommandSigner:
    return CommandSigner(KEY, ttl_s=60, clock=lambda: NOW_MS / 1000)


def _check(command: proto.Command, *, last: int = 0, last_id: str = "", now: int = NOW_MS):  # type: ignore[no-untyped-def]
    return check_command(
        command,
        device_id=DEVICE,
        public_key=KEY.public_key(),
        last_issued_at=last,
        last_command_id=last_id,
        now_ms=now,
    )


def test_a_signed_command_round_trips_the_wire_and_verifies() -> None:
    signed = _signer().sign(DEVICE, proto.Command(command_id="c1", action="rollback", rollout_id=7))
    decoded = proto.decode(proto.encode(signed), channel="cmd")
    assert isinstance(decoded, proto.Command)
    verdict = _check(decoded)
    assert (verdict.ok, verdict.signed) == (True, True)


def test_unsigned_rollbacks_are_refused_and_unsigned_installs_pass_unbelieved() -> None:
    assert "unsigned rollback" in _check(proto.Command(command_id="r", action="rollback")).reason
    install = _check(proto.Command(command_id="i", action="install", artifact=ARTIFACT))
    assert (install.ok, install.signed) == (True, False)
    # An unsigned command keeps the wire form older agents read: no envelope fields.
    assert b"signature" not in proto.encode(proto.Command(command_id="p", action="ping"))


def test_replayed_expired_and_duplicate_commands() -> None:
    signer = _signer()
    first = signer.sign(DEVICE, proto.Command(command_id="a", action="rollback"))
    second = signer.sign(DEVICE, proto.Command(command_id="b", action="rollback"))
    assert second.issued_at is not None and first.issued_at is not None
    assert second.issued_at > first.issued_at  # strictly increasing in one millisecond
    # The same delivery twice (QoS 1): a duplicate, not an error.
    assert _check(second, last=second.issued_at, last_id="b").duplicate
    # An older command after a newer one: refused as replayed.
    assert "replayed" in _check(first, last=second.issued_at, last_id="b").reason
    # Past its expiry on the device's clock: refused.
    assert "expired" in _check(first, now=NOW_MS + 61_000).reason


FIELDS = {
    "command_id": st.text(min_size=1, max_size=20).filter(lambda s: s != "c"),
    "action": st.sampled_from(["install", "ping"]),
    "rollout_id": st.integers(0, 2**31 - 1),
    "model_version_id": st.integers(0, 2**31 - 1),
    "issued_at": st.integers(0, 2**53 - 1),
    "expires_at": st.integers(0, 2**53 - 1),
}


@settings(max_examples=200, deadline=None)
@given(data=st.data(), name=st.sampled_from(sorted(FIELDS)))
def test_changing_any_signed_field_breaks_the_signature(data: st.DataObject, name: str) -> None:
    signed = _signer().sign(
        DEVICE,
        proto.Command(
            command_id="c", action="rollback", rollout_id=1, model_version_id=2, artifact=ARTIFACT
        ),
    )
    value = data.draw(FIELDS[name].filter(lambda v: v != getattr(signed, name)))
    forged = dataclasses.replace(signed, **{name: value})
    assert "does not verify" in _check(forged).reason


def test_another_device_or_another_artifact_breaks_the_signature() -> None:
    signed = _signer().sign(
        DEVICE, proto.Command(command_id="i", action="install", artifact=ARTIFACT)
    )
    other_ref = dataclasses.replace(ARTIFACT, sha256="ef" * 32)
    assert "does not verify" in _check(dataclasses.replace(signed, artifact=other_ref)).reason
    verdict = check_command(
        signed,
        device_id="dev-b",
        public_key=KEY.public_key(),
        last_issued_at=0,
        last_command_id="",
        now_ms=NOW_MS,
    )
    assert "does not verify" in verdict.reason
