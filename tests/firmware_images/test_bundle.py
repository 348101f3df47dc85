"""The signed bundle container: packing, and every way verification must refuse."""

from __future__ import annotations

import io
import zipfile

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from firmware_images_testkit import (
    FAKE_MODEL,
    inserted_before_directory,
    inserted_between_members,
    make_manifest,
    members,
    repack,
    replace,
    with_comment,
    with_extra_field,
    with_other_timestamps,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_images.bundle import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    inspect_bundle,
    pack_bundle,
    read_bundle,
    sign_manifest,
    verify_bundle,
)
from firmware_images.errors import (
    BundleError,
    BundleFormatError,
    BundleTooLargeError,
    ModelIntegrityError,
    SignatureError,
    TargetMismatchError,
    WrongKeyError,
)
from firmware_images.manifest import to_canonical_bytes

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
PUB = KEY.public_key()


def _bundle(model: bytes = FAKE_MODEL, *, key=KEY, target="cpu-x86", fmt="onnx") -> bytes:
    manifest = make_manifest(model=model, key=key, target=target, fmt=fmt)
    return pack_bundle(manifest=manifest, model=model, private_key=key)


def _offset_of(bundle: bytes, name: str) -> int:
    """Offset of a member's data inside the bundle."""
    with zipfile.ZipFile(io.BytesIO(bundle)) as archive:
        info = archive.getinfo(name)
    header = bundle[info.header_offset : info.header_offset + 30]
    name_len = int.from_bytes(header[26:28], "little")
    extra_len = int.from_bytes(header[28:30], "little")
    return info.header_offset + 30 + name_len + extra_len


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def test_pack_then_verify_returns_manifest_and_model():
    bundle = _bundle()
    verified = verify_bundle(bundle, public_key=PUB, target="cpu-x86")
    assert verified.model == FAKE_MODEL
    assert verified.manifest == make_manifest(key=KEY)
    assert [name for name, _ in members(bundle)] == [MANIFEST_NAME, SIGNATURE_NAME, "model.onnx"]


def test_packing_is_deterministic():
    assert _bundle() == _bundle()


def test_verify_reads_files_and_writes_model_atomically(tmp_path):
    path = tmp_path / "b.ffb"
    path.write_bytes(_bundle())
    verified = verify_bundle(path, public_key=PUB)
    verified.write_model(tmp_path / "slot-a.onnx")
    assert (tmp_path / "slot-a.onnx").read_bytes() == FAKE_MODEL
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.ffb", "slot-a.onnx"]
    with pytest.raises(FileNotFoundError):
        verified.write_model(tmp_path / "missing" / "m.onnx")
    assert inspect_bundle(path).target == "cpu-x86"


def test_flipped_byte_in_model_is_refused():
    bundle = _bundle()
    bad = _flip(bundle, _offset_of(bundle, "model.onnx") + 100)
    with pytest.raises(ModelIntegrityError, match="model.onnx .*modified or corrupted"):
        verify_bundle(bad, public_key=PUB)


def test_model_swapped_with_valid_zip_checksums_is_refused_by_the_pinned_hash():
    parts = members(_bundle())
    tampered = _flip(parts[2][1], 5)
    forged = repack([parts[0], parts[1], ("model.onnx", tampered)])
    with pytest.raises(ModelIntegrityError, match="SHA-256 pinned by the signed manifest"):
        verify_bundle(forged, public_key=PUB)


def test_flipped_byte_in_manifest_is_refused():
    bundle = _bundle()
    bad = _flip(bundle, _offset_of(bundle, MANIFEST_NAME) + 40)
    with pytest.raises(SignatureError, match="manifest.json is damaged"):
        verify_bundle(bad, public_key=PUB)


def test_manifest_rewritten_with_valid_zip_checksums_is_refused_by_the_signature():
    parts = members(_bundle())
    edited = parts[0][1].replace(b'"exported":0.945', b'"exported":0.999')
    assert edited != parts[0][1]
    forged = repack([(MANIFEST_NAME, edited), parts[1], parts[2]])
    with pytest.raises(SignatureError, match="modified or corrupted after signing") as err:
        verify_bundle(forged, public_key=PUB)
    assert not isinstance(err.value, WrongKeyError)


def test_bundle_signed_by_another_key_is_refused_naming_both_keys():
    bundle = _bundle(key=OTHER)
    with pytest.raises(WrongKeyError, match="signed by key ed25519:.*not by the trusted key"):
        verify_bundle(bundle, public_key=PUB)


def test_manifest_claiming_our_key_but_signed_by_another_is_refused():
    manifest = to_canonical_bytes(make_manifest(key=KEY))
    forged = repack(
        [
            (MANIFEST_NAME, manifest),
            (SIGNATURE_NAME, sign_manifest(manifest, OTHER)),
            ("model.onnx", FAKE_MODEL),
        ]
    )
    with pytest.raises(SignatureError):
        verify_bundle(forged, public_key=PUB)


def test_bundle_for_another_target_is_refused():
    bundle = _bundle(target="rpi5")
    with pytest.raises(TargetMismatchError, match="for target 'rpi5', this device is 'cpu-x86'"):
        verify_bundle(bundle, public_key=PUB, target="cpu-x86")
    assert verify_bundle(bundle, public_key=PUB, target="rpi5").manifest.target == "rpi5"


@pytest.mark.parametrize("keep", [0, 1, 3, 30, 200, -1, -22, -23, -100, -5000])
def test_truncated_bundle_is_refused(keep):
    bundle = _bundle()
    with pytest.raises(BundleFormatError, match="truncated|not a fedfleet bundle"):
        verify_bundle(bundle[:keep], public_key=PUB)


def test_truncated_file_on_disk_is_refused(tmp_path):
    path = tmp_path / "cut.ffb"
    path.write_bytes(_bundle()[:-10])
    with pytest.raises(BundleFormatError, match="truncated"):
        verify_bundle(path, public_key=PUB)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda b: b + b"junk", "bytes before or after"),
        (lambda b: b"junk" + b, "no ZIP header"),
        (lambda b: b"", "no ZIP header"),
        (lambda b: b"hello world" * 10, "no ZIP header"),
    ],
)
def test_extra_or_missing_bytes_are_refused(edit, message):
    with pytest.raises(BundleFormatError, match=message):
        verify_bundle(edit(_bundle()), public_key=PUB)


@pytest.mark.parametrize(
    ("arrange", "message"),
    [
        (lambda p: [*p, ("extra.txt", b"x")], "exactly manifest.json"),
        (lambda p: p[:2], "exactly manifest.json"),
        (lambda p: [p[1], p[0], p[2]], "in that order"),
        (lambda p: [p[0], p[0], p[2]], "in that order"),
        (lambda p: [p[0], p[1], ("model.pt", p[2][1])], "unknown model member"),
        (lambda p: [p[0], (SIGNATURE_NAME, p[1][1][:10]), p[2]], "must be 64 bytes"),
        (lambda p: [p[0], p[1], ("model.tflite", p[2][1])], "declares model.onnx"),
    ],
)
def test_malformed_member_lists_are_refused(arrange, message):
    parts = members(_bundle())
    forged = repack(arrange(parts))
    with pytest.raises(BundleFormatError, match=message):
        verify_bundle(forged, public_key=PUB)


def test_compressed_members_are_refused():
    forged = repack(members(_bundle()), compress=zipfile.ZIP_DEFLATED)
    with pytest.raises(BundleFormatError, match="compressed or encrypted"):
        verify_bundle(forged, public_key=PUB)


def test_size_limits_are_enforced(tmp_path):
    bundle = _bundle()
    with pytest.raises(BundleTooLargeError, match="more than the 1000 allowed"):
        verify_bundle(bundle, public_key=PUB, max_bytes=1000)
    path = tmp_path / "b.ffb"
    path.write_bytes(bundle)
    with pytest.raises(BundleTooLargeError):
        verify_bundle(path, public_key=PUB, max_bytes=1000)
    with pytest.raises(BundleTooLargeError, match="over this target's limit"):
        verify_bundle(bundle, public_key=PUB, max_model_bytes=len(FAKE_MODEL) - 1)
    assert verify_bundle(bundle, public_key=PUB, max_model_bytes=len(FAKE_MODEL)).model


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(BundleFormatError, match="not found"):
        verify_bundle(tmp_path / "nope.ffb", public_key=PUB)


def test_pack_refuses_a_manifest_that_does_not_pin_the_model_or_the_key():
    manifest = make_manifest(key=KEY)
    with pytest.raises(ValueError, match="does not match the model"):
        pack_bundle(manifest=manifest, model=FAKE_MODEL + b"x", private_key=KEY)
    with pytest.raises(ValueError, match="key_id"):
        pack_bundle(manifest=manifest, model=FAKE_MODEL, private_key=OTHER)
    with pytest.raises(BundleError):
        replace(manifest, model__file="model.tflite")


BUNDLE = _bundle(model=FAKE_MODEL[:700])
VERIFIED = verify_bundle(BUNDLE, public_key=PUB)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(index=st.integers(min_value=0, max_value=len(BUNDLE) - 1), bit=st.integers(0, 7))
def test_any_flipped_bit_is_refused(index, bit):
    # Every byte of a bundle is covered: the signature, the pinned model hash, or the one
    # canonical container layout (ZIP timestamps and attributes included).
    data = bytearray(BUNDLE)
    data[index] ^= 1 << bit
    with pytest.raises(BundleError):
        verify_bundle(bytes(data), public_key=PUB)


UNCOVERED = "signature does not cover"


@pytest.mark.parametrize(
    ("forge", "message"),
    [
        pytest.param(lambda b: with_comment(b, b"c" * 60_000), UNCOVERED, id="60KB-zip-comment"),
        pytest.param(lambda b: with_comment(b, b"!"), UNCOVERED, id="1-byte-zip-comment"),
        pytest.param(
            lambda b: inserted_before_directory(b, b"x" * 1000), UNCOVERED, id="before-directory"
        ),
        pytest.param(
            lambda b: inserted_before_directory(b, b"x" * 7, fix_offset=False),
            "bytes before or after",  # what zipfile then reads as bytes prepended
            id="before-directory-offsets-unfixed",
        ),
        pytest.param(
            lambda b: inserted_between_members(b, b"y" * 64), UNCOVERED, id="between-members"
        ),
        pytest.param(with_extra_field, UNCOVERED, id="extra-field"),
        pytest.param(with_other_timestamps, UNCOVERED, id="other-timestamps"),
    ],
)
def test_bytes_the_signature_does_not_cover_are_refused(forge, message):
    # Prepare: a forgery of the bundle with the same three members.
    forged = forge(BUNDLE)
    assert forged != BUNDLE
    # Execute / Assert: refused, naming what is wrong.
    with pytest.raises(BundleFormatError, match=message):
        verify_bundle(forged, public_key=PUB)
    with pytest.raises(BundleFormatError, match=message):
        read_bundle(forged)


def test_forgeries_are_well_formed_zips_with_the_same_members():
    # The forgeries above are not refused for being unreadable: zipfile reads them whole.
    for forged in (
        with_comment(BUNDLE, b"c" * 60_000),
        inserted_before_directory(BUNDLE, b"x" * 1000),
        inserted_between_members(BUNDLE, b"y" * 64),
        with_extra_field(BUNDLE),
        with_other_timestamps(BUNDLE),
    ):
        assert members(forged) == members(BUNDLE)


@settings(max_examples=50, deadline=None)
@given(
    model=st.binary(min_size=1, max_size=3000),
    target=st.sampled_from(["cpu-x86", "rpi5"]),
    fmt=st.sampled_from(["onnx", "tflite"]),
)
def test_a_signed_bundle_has_one_byte_string(model, target, fmt):
    # Packing the verified members again gives the same bytes: one SHA-256 per bundle.
    bundle = _bundle(model, target=target, fmt=fmt)
    verified = verify_bundle(bundle, public_key=PUB, target=target)
    again = pack_bundle(manifest=verified.manifest, model=verified.model, private_key=KEY)
    assert again == bundle


def test_read_bundle_does_not_verify():
    forged = repack([(n, d if n != SIGNATURE_NAME else bytes(64)) for n, d in members(_bundle())])
    raw = read_bundle(forged)
    assert raw.model == FAKE_MODEL
    with pytest.raises(SignatureError):
        verify_bundle(forged, public_key=PUB)
