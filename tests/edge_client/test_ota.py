"""A/B slots, downloads and installs on disk (no broker): the device never bricks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_client.ota import (
    BUNDLE_FILE,
    InstallError,
    SlotMeta,
    SlotStore,
    install,
)
from edge_client.protocol import mqtt as proto
from firmware_images.demo import build_demo_bundle

CHUNK = 4096


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _store(root: Path, key: Ed25519PrivateKey, *, target: str = "cpu-x86", n: int = 2) -> SlotStore:
    return SlotStore(
        root / "slots", public_key=key.public_key(), target=target, max_failed_starts=n
    )


def _bundle_file(tmp: Path, key: Ed25519PrivateKey, version: str, **kw: object) -> Path:
    bundle = build_demo_bundle(private_key=key, version=version, **kw)  # type: ignore[arg-type]
    path = tmp / f"{version}.ffb"
    path.write_bytes(bundle.data)
    return path


def _ref(data: bytes) -> proto.ArtifactRef:
    return proto.ArtifactRef(
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        chunk_size=CHUNK,
        chunk_sha256=tuple(
            hashlib.sha256(data[i : i + CHUNK]).hexdigest() for i in range(0, len(data), CHUNK)
        ),
    )


def _chunks(data: bytes) -> list[proto.Chunk]:
    sha = hashlib.sha256(data).hexdigest()
    return [
        proto.Chunk(transfer_id=sha, index=i // CHUNK, data=data[i : i + CHUNK])
        for i in range(0, len(data), CHUNK)
    ]


def test_install_switches_slots_and_keeps_the_previous_one(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    store = _store(tmp_path, key)
    first = install(store, bundle_file=_bundle_file(tmp_path, key, "v1"), model_version_id=1)
    second = install(
        store, bundle_file=_bundle_file(tmp_path, key, "v2", seed=2), model_version_id=2
    )
    assert (first.slot, second.slot) == ("a", "b")
    pointer = store.pointer()
    assert (pointer.active, pointer.previous, pointer.confirmed) == ("b", "a", True)
    assert store.start() is not None and store.start().meta.version == "v2"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("kwargs", "stage"),
    [
        ({"break_self_test": True}, "self-test"),
        ({"target": "rpi5"}, "verify"),
    ],
)
def test_a_failing_install_leaves_the_previous_model_active(
    tmp_path: Path, key: Ed25519PrivateKey, kwargs: dict[str, object], stage: str
) -> None:
    store = _store(tmp_path, key)
    install(store, bundle_file=_bundle_file(tmp_path, key, "v1"), model_version_id=1)
    with pytest.raises(InstallError) as err:
        install(store, bundle_file=_bundle_file(tmp_path, key, "bad", **kwargs), model_version_id=2)
    assert err.value.stage == stage
    assert store.pointer().active == "a"
    assert store.start().meta.version == "v1"  # type: ignore[union-attr]


def test_bundles_signed_by_another_key_or_tampered_are_refused(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    store = _store(tmp_path, key)
    other = _bundle_file(tmp_path, Ed25519PrivateKey.generate(), "foreign")
    with pytest.raises(InstallError, match="key"):
        install(store, bundle_file=other, model_version_id=1)
    tampered = _bundle_file(tmp_path, key, "tampered")
    data = bytearray(tampered.read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered.write_bytes(bytes(data))
    with pytest.raises(InstallError):
        install(store, bundle_file=tampered, model_version_id=1)
    assert store.pointer().active is None and store.meta("a") is None


@pytest.mark.parametrize("forgery", ["60KB-zip-comment", "bytes-before-the-directory"])
def test_bundle_bytes_the_signature_does_not_cover_are_refused(
    tmp_path: Path, key: Ed25519PrivateKey, forgery: str
) -> None:
    # Prepare: a valid bundle, then the same signed bundle with unsigned bytes in it.
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "firmware_images"))
    from firmware_images_testkit import inserted_before_directory, with_comment

    store = _store(tmp_path, key)
    path = _bundle_file(tmp_path, key, "v1")
    good = path.read_bytes()
    forged = tmp_path / "forged.ffb"
    forged.write_bytes(
        with_comment(good, b"c" * 60_000)
        if forgery == "60KB-zip-comment"
        else inserted_before_directory(good, b"x" * 1000)
    )
    # Execute / Assert: refused at the verify stage, nothing written; the original installs.
    with pytest.raises(InstallError, match="signature does not cover") as refused:
        install(store, bundle_file=forged, model_version_id=1)
    assert refused.value.stage == "verify"
    assert store.pointer().active is None and store.meta("a") is None
    install(store, bundle_file=path, model_version_id=1)
    assert store.meta(store.pointer().active or "") is not None


def test_crash_after_writing_the_slot_but_before_the_switch_starts_the_previous(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    store = _store(tmp_path, key)
    install(store, bundle_file=_bundle_file(tmp_path, key, "v1"), model_version_id=1)
    # A crash half-way through writing slot b: bundle partially copied, no meta.
    (store.slot_dir("b") / BUNDLE_FILE).write_bytes(b"PK\x03\x04 half")
    assert store.start().meta.version == "v1"  # type: ignore[union-attr]
    # A crash after slot b was fully written but before the pointer moved.
    v2 = _bundle_file(tmp_path, key, "v2", seed=2)
    store.write_slot(
        "b", bundle_file=v2, meta=SlotMeta(2, "v2", hashlib.sha256(v2.read_bytes()).hexdigest())
    )
    loaded = store.start()
    assert loaded is not None and (loaded.slot, loaded.meta.version) == ("a", "v1")


def test_a_new_model_that_fails_its_first_starts_is_rolled_back(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    store = _store(tmp_path, key, n=2)
    install(store, bundle_file=_bundle_file(tmp_path, key, "v1"), model_version_id=1)
    v2 = _bundle_file(tmp_path, key, "v2", seed=2)
    store.write_slot("b", bundle_file=v2, meta=SlotMeta(2, "v2", "0" * 64))
    store.switch("b")
    # The new slot's file gets damaged (e.g. storage error) before its first start.
    (store.slot_dir("b") / BUNDLE_FILE).write_bytes(b"garbage")
    loaded = store.start()
    assert loaded is not None and loaded.meta.version == "v1"
    pointer = store.pointer()
    assert (pointer.active, pointer.confirmed) == ("a", True)


def test_a_crash_while_starting_counts_as_a_failed_start(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    store = _store(tmp_path, key, n=2)
    install(store, bundle_file=_bundle_file(tmp_path, key, "v1"), model_version_id=1)
    store.write_slot(
        "b", bundle_file=_bundle_file(tmp_path, key, "v2", seed=2), meta=SlotMeta(2, "v2", "0" * 64)
    )
    store.switch("b")
    # Two starts that died (kill -9) while loading: the counter was written before loading.
    pointer_file = store.root / "pointer.json"
    body = json.loads(pointer_file.read_text())
    body["failed_starts"] = 2
    pointer_file.write_text(json.dumps(body))
    (store.slot_dir("b") / BUNDLE_FILE).write_bytes(b"garbage")
    assert store.start().meta.version == "v1"  # type: ignore[union-attr]


def test_a_damaged_pointer_means_no_model_not_a_crash(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    store = _store(tmp_path, key)
    (store.root / "pointer.json").write_text("{not json")
    assert store.start() is None


def test_download_accepts_chunks_in_any_order_once_and_refuses_foreign_or_bad_ones(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    store = _store(tmp_path, key)
    data = _bundle_file(tmp_path, key, "v1", pad_to=30_000).read_bytes()
    download = store.download(_ref(data))
    chunks = _chunks(data)
    assert download.accept(proto.Chunk(transfer_id="f" * 64, index=0, data=chunks[0].data)) is False
    bad = proto.Chunk(transfer_id=chunks[1].transfer_id, index=1, data=b"x" * len(chunks[1].data))
    assert download.accept(bad) is False and download.rejected == 1
    assert (
        download.accept(proto.Chunk(transfer_id=chunks[0].transfer_id, index=999, data=b""))
        is False
    )
    for chunk in reversed(chunks):
        assert download.accept(chunk) is True
    assert download.accept(chunks[0]) is False  # duplicate
    assert download.complete and download.finish().read_bytes() == data


def test_download_resumes_from_the_part_file_after_a_restart(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    store = _store(tmp_path, key)
    data = _bundle_file(tmp_path, key, "v1", pad_to=30_000).read_bytes()
    chunks = _chunks(data)
    first = store.download(_ref(data))
    for chunk in chunks[::2]:
        first.accept(chunk)
    resumed = store.download(_ref(data))  # a new agent process
    assert resumed.received == len(chunks[::2])
    assert resumed.missing() == [c.index for c in chunks[1::2]]


def test_download_hashes_the_whole_file_as_chunks_arrive_in_any_order(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    store = _store(tmp_path, key)
    data = _bundle_file(tmp_path, key, "v1", pad_to=30_000).read_bytes()
    chunks = _chunks(data)
    download = store.download(_ref(data))
    order = [2, 0, 1, *range(len(chunks) - 1, 2, -1)]
    for index in order:
        assert download.accept(chunks[index]) is True
    assert download.finish().read_bytes() == data


def test_download_finish_refuses_an_incomplete_download(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    store = _store(tmp_path, key)
    data = _bundle_file(tmp_path, key, "v1", pad_to=30_000).read_bytes()
    download = store.download(_ref(data))
    download.accept(_chunks(data)[0])
    with pytest.raises(InstallError, match="missing") as err:
        download.finish()
    assert err.value.stage == "download"


def test_download_finish_refuses_a_part_file_changed_on_disk_after_a_chunk_was_accepted(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    store = _store(tmp_path, key)
    data = _bundle_file(tmp_path, key, "v1", pad_to=30_000).read_bytes()
    chunks = _chunks(data)
    download = store.download(_ref(data))
    for chunk in chunks[1:]:  # out of order: chunks 1.. are read back from disk later
        download.accept(chunk)
    with download.path.open("r+b") as handle:  # flash corruption after the write
        handle.seek(CHUNK + 5)
        handle.write(b"\xff\x00")
    download.accept(chunks[0])
    with pytest.raises(InstallError, match="SHA-256") as err:
        download.finish()
    assert err.value.stage == "download" and not download.path.exists()


def test_install_moves_a_finished_download_into_the_slot(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    store = _store(tmp_path, key)
    data = _bundle_file(tmp_path, key, "v1").read_bytes()
    download = store.download(_ref(data))
    for chunk in _chunks(data):
        download.accept(chunk)
    loaded = install(store, bundle_file=download.finish(), model_version_id=1, move=True)
    assert not download.path.exists()
    assert (store.slot_dir(loaded.slot) / BUNDLE_FILE).read_bytes() == data
    assert loaded.meta.sha256 == hashlib.sha256(data).hexdigest()
    assert store.start() is not None and store.start().meta.version == "v1"  # type: ignore[union-attr]
