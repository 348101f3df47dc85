"""The device's anti-rollback floor on disk (no broker): signed release and task decide
what installs; a rollback to the previous slot never lowers the floor."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_client.floor import read_floor
from edge_client.ota import BUNDLE_FILE, InstallError, SlotStore, install
from firmware_images.bundle import pack_bundle, verify_bundle
from firmware_images.demo import build_demo_bundle


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _store(root: Path, key: Ed25519PrivateKey, *, task: str | None = None) -> SlotStore:
    return SlotStore(
        root / "slots",
        public_key=key.public_key(),
        target="cpu-x86",
        max_failed_starts=1,
        task=task,
    )


def _file(tmp: Path, key: Ed25519PrivateKey, version: str, **kw: object) -> Path:
    bundle = build_demo_bundle(private_key=key, version=version, **kw)  # type: ignore[arg-type]
    path = tmp / f"{version}.ffb"
    path.write_bytes(bundle.data)
    return path


def _refused(store: SlotStore, path: Path) -> str:
    with pytest.raises(InstallError) as caught:
        install(store, bundle_file=path, model_version_id=None)
    assert caught.value.stage == "floor"
    return str(caught.value)


def test_an_older_release_is_refused_and_the_same_bundle_again_is_not(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    # Prepare: v1 (release 10) then v2 (release 20).
    store = _store(tmp_path, key)
    v1 = _file(tmp_path, key, "v1", seed=1, release=10)
    v2 = _file(tmp_path, key, "v2", seed=2, release=20)
    install(store, bundle_file=v1, model_version_id=None)
    install(store, bundle_file=v2, model_version_id=None)
    # Assert: v1 again (a replayed older bundle) and another bundle of release 20 are refused;
    # v2's own bytes again pass the floor (a re-rollout after a rollback).
    assert "release 10 is not newer than this device's floor 20" in _refused(store, v1)
    same = _file(tmp_path, key, "v2b", seed=5, release=20)
    assert "release 20 is not newer" in _refused(store, same)
    floor = read_floor(store.root / "floor.json")
    assert (floor.release, floor.sha256) == (20, hashlib.sha256(v2.read_bytes()).hexdigest())
    assert floor.task == "synthetic-logreg"
    assert store.start().meta.version == "v2"  # type: ignore[union-attr]


def test_a_failed_start_rolls_back_and_the_floor_stays_raised(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    # Prepare: v1 then v2 installed; v2's slot is damaged before the next start.
    store = _store(tmp_path, key)
    v1 = _file(tmp_path, key, "v1", seed=1, release=10)
    v2 = _file(tmp_path, key, "v2", seed=2, release=20)
    install(store, bundle_file=v1, model_version_id=None)
    install(store, bundle_file=v2, model_version_id=None)
    v2_bytes = v2.read_bytes()
    (store.slot_dir("b") / BUNDLE_FILE).write_bytes(b"garbage")
    # Execute: the automatic rollback (no command needed).
    loaded = store.start()
    # Assert: v1 runs; the floor is still v2's, so v1 cannot be pushed again as an
    # install, while v2 itself can be re-installed.
    assert loaded is not None and loaded.meta.version == "v1"
    assert read_floor(store.root / "floor.json").release == 20
    assert "not newer" in _refused(store, v1)
    again = tmp_path / "again.ffb"
    again.write_bytes(v2_bytes)
    assert install(store, bundle_file=again, model_version_id=None).meta.version == "v2"


def test_a_bundle_of_another_task_is_refused_first_install_included(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    # A device configured for digits-cnn refuses a synthetic-logreg bundle on first install.
    configured = _store(tmp_path / "c", key, task="digits-cnn")
    path = _file(tmp_path, key, "v1", seed=1)
    assert "'synthetic-logreg' model but this device runs 'digits-cnn'" in _refused(
        configured, path
    )
    # An unconfigured device is pinned by its first install.
    pinned = _store(tmp_path / "p", key)
    install(pinned, bundle_file=path, model_version_id=None)
    other = _file(tmp_path, key, "x1", seed=2, task="digits-cnn")
    assert "this device runs 'synthetic-logreg'" in _refused(pinned, other)


def test_a_bundle_without_a_release_installs_only_before_the_first_release(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    # Prepare: schema-2 bundles (from before release numbers), signed with the same key.
    def legacy(version: str, seed: int) -> Path:
        demo = build_demo_bundle(private_key=key, version=version, seed=seed)
        model = verify_bundle(demo.data, public_key=key.public_key(), target="cpu-x86").model
        manifest = replace(demo.manifest, schema=2, release=None)
        path = tmp_path / f"{version}.ffb"
        path.write_bytes(pack_bundle(manifest=manifest, model=model, private_key=key))
        return path

    store = _store(tmp_path, key)
    # Assert: a migration window: legacy bundles install while the floor is 0 ...
    install(store, bundle_file=legacy("old1", 1), model_version_id=None)
    install(store, bundle_file=legacy("old2", 2), model_version_id=None)
    install(store, bundle_file=_file(tmp_path, key, "v3", seed=3, release=5), model_version_id=None)
    # ... and never after a release-numbered bundle.
    assert "has no release number" in _refused(store, legacy("old4", 4))


def test_a_damaged_floor_refuses_installs_instead_of_forgetting(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    store = _store(tmp_path, key)
    install(store, bundle_file=_file(tmp_path, key, "v1", seed=1), model_version_id=None)
    (store.root / "floor.json").write_text("{broken")
    assert "floor file" in _refused(store, _file(tmp_path, key, "v2", seed=2))
    assert store.start().meta.version == "v1"  # type: ignore[union-attr]
