"""A bundle artifact must be the model version it is stored for: task, version, checkpoint.

An operator could otherwise upload an old (validly signed) bundle as a newer version's
``bundle`` artifact and roll it out: devices would install the old model while the fleet
shows the new version. ``POST /api/v1/models/{id}/artifacts`` with ``format=bundle``
therefore reads the bundle's manifest (verifying its signature when the fleet has
``FEDFLEET_FLEET_SIGNING_PUBLIC_KEY``; the container's layout is always checked) and
refuses it with 422 unless:

- ``manifest.task`` is the version's task;
- ``manifest.target`` is the artifact's ``target`` form field;
- ``manifest.source.model_version``, when set (``fedfleet image build --model N``), is
  the version's id;
- ``manifest.source.checkpoint_sha256``, when the version has ``torch`` checkpoint
  artifacts, is one of theirs.

A bundle built from a file (no ``--model``) for a version that holds no checkpoint has
nothing to be compared with and is accepted: register the checkpoint first to bind it.

**Releases only go up** (:func:`release_conflict`): the manifest's signed ``release`` must
be greater than the release of every bundle already stored for the same task and target
(the devices running that task on that target keep a floor and would refuse it; a
rollout of it could only fail). A bundle without a release (manifest schema 1 or 2) is
accepted only while no stored bundle of that task and target has one.
``fedfleet image publish`` checks the same on the operator's side
(:func:`firmware_images.registry.publish_bundle`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from firmware_images.bundle import inspect_bundle, verify_bundle
from firmware_images.errors import BundleError
from firmware_images.manifest import Manifest


def read_manifest(path: Path, *, public_key: Ed25519PublicKey | None) -> Manifest:
    """The manifest of the bundle at ``path``; its signature checked when a key is given.

    Raises:
        ValueError: not a bundle, or it does not verify (one line saying why).
    """
    try:
        if public_key is not None:
            return verify_bundle(path, public_key=public_key).manifest
        return inspect_bundle(path)
    except BundleError as err:
        raise ValueError(f"the file is not a valid fedfleet bundle: {err}") from None


def mismatch(
    manifest: Manifest,
    *,
    model_version_id: int,
    task: str,
    target: str,
    checkpoints: Collection[str],
) -> str | None:
    """Why this manifest is not model version ``model_version_id``'s bundle, or None."""
    if manifest.task != task:
        return (
            f"the bundle holds a {manifest.task!r} model but model version "
            f"{model_version_id} is a {task!r} model; upload it to a version of that task"
        )
    if manifest.target != target:
        return (
            f"the bundle was built for target {manifest.target!r}, not {target!r}; "
            f"upload it with target={manifest.target}"
        )
    built_from = manifest.source.model_version
    if built_from is not None and built_from != str(model_version_id):
        return (
            f"the bundle was built from model version {built_from}, not {model_version_id}; "
            f"upload it to version {built_from}, or build one with "
            f"`fedfleet image build --model {model_version_id}`"
        )
    if checkpoints and manifest.source.checkpoint_sha256 not in checkpoints:
        return (
            f"the bundle was built from checkpoint sha256 "
            f"{manifest.source.checkpoint_sha256[:16]}…, which is not model version "
            f"{model_version_id}'s checkpoint; build it with "
            f"`fedfleet image build --model {model_version_id}`"
        )
    return None


def release_conflict(manifest: Manifest, *, stored: Iterable[tuple[int, int | None]]) -> str | None:
    """Why ``manifest``'s release is not above every ``(model_version_id, release)`` already
    stored for its task and target (releases None: bundles from before manifest schema 3,
    which bind nothing), or None."""
    known = [(release, version) for version, release in stored if release is not None]
    if not known:
        return None
    top, version = max(known)
    if manifest.release is None:
        return (
            f"the bundle has no release number (manifest schema {manifest.schema}), but "
            f"release {top} is stored for task {manifest.task!r} on target "
            f"{manifest.target!r} (model version {version}); build it again with "
            f"`fedfleet image build` (a release above {top})"
        )
    if manifest.release <= top:
        return (
            f"bundle release {manifest.release} for task {manifest.task!r} on target "
            f"{manifest.target!r} is not above release {top}, stored for model version "
            f"{version}; devices would refuse it as a downgrade: build with "
            f"`--release` above {top}"
        )
    return None
