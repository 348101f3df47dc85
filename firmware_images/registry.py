"""Bundles and the fleet's model registry: fetch a version's checkpoint, publish a bundle.

- :func:`fetch_checkpoint` downloads the ``torch`` artifact of a model version (the
  state dict ``fedfleet model register`` uploaded) and checks it against the SHA-256 the
  registry recorded, so ``fedfleet image build --model 7`` builds from exactly the
  weights that were registered.
- :func:`publish_bundle` stores a signed bundle as the ``bundle`` artifact of a version
  for the bundle's target. That row is what ``fedfleet rollout create --model 7`` picks
  for each device whose hardware target matches (``fleet/crud/rollouts.py``). The bundle is
  verified with the public half of the signing key first, so a tampered or foreign file
  is never published, and the artifact carries the key's Ed25519 signature of the
  file's SHA-256 (the form a fleet with a signing public key requires).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from firmware_images.bundle import load_bundle_bytes, sha256_hex, verify_bundle
from firmware_images.keys import load_private_key, sign_digest
from firmware_images.manifest import Manifest
from fleet.client import ArtifactInfo, FleetClient, FleetError, FleetNotFoundError, ModelInfo

TORCH_FORMAT = "torch"
BUNDLE_FORMAT = "bundle"
ANY_TARGET = "any"


@dataclass(frozen=True)
class FetchedCheckpoint:
    """A downloaded checkpoint, the version it belongs to and the artifact row."""

    path: Path
    model: ModelInfo
    artifact: ArtifactInfo


@dataclass(frozen=True)
class PublishedBundle:
    """A bundle stored in the registry: the artifact row and the bundle's manifest."""

    artifact: ArtifactInfo
    manifest: Manifest


def checkpoint_artifact(model: ModelInfo) -> ArtifactInfo:
    """The version's ``torch`` artifact (target ``any`` preferred).

    Raises:
        FleetNotFoundError: the version has no checkpoint to build from.
    """
    torch_artifacts = [a for a in model.artifacts if a.format == TORCH_FORMAT]
    if not torch_artifacts:
        held = ", ".join(sorted({f"{a.format}/{a.target}" for a in model.artifacts})) or "none"
        raise FleetNotFoundError(
            f"model version {model.id} has no torch checkpoint artifact (it holds: {held}); "
            "register the run's model.pt with `fedfleet model register RUN_DIR`, or build "
            "from a file with --checkpoint"
        )
    torch_artifacts.sort(key=lambda a: (a.target != ANY_TARGET, a.id))
    return torch_artifacts[0]


def fetch_checkpoint(
    client: FleetClient, version: int, *, dest_dir: Path, task: str | None = None
) -> FetchedCheckpoint:
    """Download version ``version``'s checkpoint into ``dest_dir`` (hash-checked).

    ``task``, when given, must be the version's task.
    """
    model = client.get_model(version)
    if task is not None and task != model.task:
        raise FleetError(
            f"model version {version} was trained for task {model.task!r}, not {task!r}; "
            f"drop --task or pass --task {model.task}"
        )
    artifact = checkpoint_artifact(model)
    path = client.download(artifact, Path(dest_dir) / f"model-{version}.pt")
    return FetchedCheckpoint(path=path, model=model, artifact=artifact)


def publish_bundle(
    client: FleetClient, version: int, *, bundle: Path, key: Path
) -> PublishedBundle:
    """Verify ``bundle`` with ``key``'s public half and store it as a ``bundle`` artifact.

    Raises:
        BundleError: the bundle does not verify with the key.
        KeyFileError: the key cannot be read.
        FleetError: the version is unknown, of another task, or already has a bundle
            for this target; or the fleet refused or could not be reached.
    """
    private_key = load_private_key(key)
    data = load_bundle_bytes(bundle)
    manifest = verify_bundle(data, public_key=private_key.public_key()).manifest
    model = client.get_model(version)
    if manifest.task != model.task:
        raise FleetError(
            f"{bundle} holds a {manifest.task!r} model but model version {version} is a "
            f"{model.task!r} model; publish it to a version of task {manifest.task!r}"
        )
    built_from = manifest.source.model_version
    if built_from is not None and built_from != str(version):
        raise FleetError(
            f"{bundle} was built from model version {built_from}, not {version}; publish "
            f"it with --model {built_from}"
        )
    checkpoints = {a.sha256 for a in model.artifacts if a.format == TORCH_FORMAT}
    if checkpoints and manifest.source.checkpoint_sha256 not in checkpoints:
        raise FleetError(
            f"{bundle} was built from checkpoint sha256 "
            f"{manifest.source.checkpoint_sha256[:16]}…, which is not model version "
            f"{version}'s checkpoint; build it with `fedfleet image build --model {version}`"
        )
    sha = sha256_hex(data)
    artifact = client.upload_artifact(
        version,
        bundle,
        format=BUNDLE_FORMAT,
        target=manifest.target,
        sha256=sha,
        signature=sign_digest(private_key, sha),
    )
    if artifact.sha256 != sha:  # pragma: no cover - the fleet checks the sha256 field
        raise FleetError(f"the fleet stored SHA-256 {artifact.sha256}, not {sha}")
    return PublishedBundle(artifact=artifact, manifest=manifest)
