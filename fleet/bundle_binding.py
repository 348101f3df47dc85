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
``fedfleet image publish`` checks the same on the operator's side
(:func:`firmware_images.registry.publish_bundle`).
"""

from __future__ import annotations

from collections.abc import Collection
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
