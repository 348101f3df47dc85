"""Over-the-air model updates on the device: chunked download, A/B slots, install, rollback.

On disk (``slots_dir``)::

    slot-a/bundle.ffb  slot-a/meta.json      one verified bundle per slot
    slot-b/bundle.ffb  slot-b/meta.json
    pointer.json                            which slot runs; written atomically
    floor.json                              the anti-rollback floor (edge_client.floor)
    downloads/<sha256>.part                 a transfer in progress (preallocated)

Invariants that keep a device from bricking:

- the active slot changes only by one atomic rename of ``pointer.json``; everything
  before that (download, verification, self-test, writing the inactive slot) can be
  interrupted — a crash, ``kill -9``, a power cut — and the device comes back on the
  slot it ran before;
- a slot counts only when its ``meta.json`` exists and is written *after* its bundle;
- nothing older than the floor is installed: a bundle's signed ``release`` must be above
  the highest one the device ran (the same bundle again is fine), its ``task`` must be
  the device's; the floor is raised after the switch and never lowered (a rollback goes
  back to the previous slot without touching it);
- after a switch the new slot is on probation: each start increments ``failed_starts``
  before loading it and a successful load and self-test confirms it; after
  ``max_failed_starts`` failed starts the pointer goes back to the previous slot.

A download keeps at most the chunks in flight in memory: each accepted chunk is checked
against its SHA-256 from the install command and written at its offset, and the whole
file's SHA-256 grows as the chunks come in. Resuming after a restart re-hashes the
``.part`` file to find which chunks are already there. A verified download is renamed
into the inactive slot (fsynced first on a durable store), not copied.

Device side: imports ``firmware_images`` (verify, run), never the fleet.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_client.floor import (
    FLOOR_FILE,
    Floor,
    FloorDamagedError,
    floor_bytes,
    model_version_of,
    raised,
    read_floor,
    refusal,
)
from edge_client.protocol.mqtt import ArtifactRef, Chunk
from firmware_images.bundle import load_bundle_bytes, verify_bundle, write_atomic
from firmware_images.errors import BundleError
from firmware_images.manifest import Manifest
from firmware_images.runtime import ModelRunner, runner_for, self_test

log = logging.getLogger(__name__)

SlotName = Literal["a", "b"]
SLOTS: tuple[SlotName, SlotName] = ("a", "b")
BUNDLE_FILE = "bundle.ffb"
META_FILE = "meta.json"
POINTER_FILE = "pointer.json"


class InstallError(Exception):
    """An install step failed; the previous model still runs. ``stage`` names the step."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


@dataclass(frozen=True)
class SlotMeta:
    """What a slot holds: the registry version id, manifest version and bundle SHA-256."""

    model_version_id: int | None
    version: str
    sha256: str


@dataclass(frozen=True)
class Pointer:
    """The active slot, the one before it, and the probation state of the active one."""

    active: SlotName | None = None
    previous: SlotName | None = None
    confirmed: bool = True
    failed_starts: int = 0


@dataclass
class LoadedModel:
    """A running model: its slot, metadata, manifest and runner."""

    slot: SlotName
    meta: SlotMeta
    manifest: Manifest
    runner: ModelRunner


class SlotStore:
    """The A/B slots and the atomic active-slot pointer under ``root``."""

    def __init__(
        self,
        root: Path,
        *,
        public_key: Ed25519PublicKey,
        target: str,
        max_failed_starts: int,
        durable: bool = True,
        task: str | None = None,
    ) -> None:
        """``durable=False`` skips fsync (only for simulated devices sharing one disk);
        ``task``: the only task this device installs (None: pinned by its first install)."""
        if max_failed_starts < 1:
            raise ValueError("max_failed_starts must be at least 1")
        self.root = Path(root)
        self.public_key = public_key
        self.target = target
        self.max_failed_starts = max_failed_starts
        self.durable = durable
        self.task = task
        for slot in SLOTS:
            (self.root / f"slot-{slot}").mkdir(parents=True, exist_ok=True)
        (self.root / "downloads").mkdir(parents=True, exist_ok=True)

    # --- pointer ------------------------------------------------------------------

    def pointer(self) -> Pointer:
        """The pointer on disk (an unreadable one counts as 'no model yet')."""
        path = self.root / POINTER_FILE
        try:
            obj = json.loads(path.read_text())
            return Pointer(
                active=_slot_or_none(obj.get("active")),
                previous=_slot_or_none(obj.get("previous")),
                confirmed=bool(obj.get("confirmed", True)),
                failed_starts=int(obj.get("failed_starts", 0)),
            )
        except FileNotFoundError:
            return Pointer()
        except (ValueError, TypeError, AttributeError):
            log.error("pointer file %s is damaged; starting without a model", path)
            return Pointer()

    def _write_pointer(self, pointer: Pointer) -> None:
        body = {
            "active": pointer.active,
            "previous": pointer.previous,
            "confirmed": pointer.confirmed,
            "failed_starts": pointer.failed_starts,
        }
        self._write(self.root / POINTER_FILE, json.dumps(body).encode())

    def _write(self, path: Path, data: bytes) -> None:
        if self.durable:
            write_atomic(path, data)  # temporary file, fsync, rename, fsync the folder
            return
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def floor(self) -> Floor:
        """The anti-rollback floor; raises FloorDamagedError when its file is damaged."""
        return read_floor(self.root / FLOOR_FILE)

    def write_floor(self, floor: Floor) -> None:
        self._write(self.root / FLOOR_FILE, floor_bytes(floor))

    def inactive_slot(self) -> SlotName:
        """The slot a new install goes to."""
        return "b" if self.pointer().active == "a" else "a"

    # --- slots --------------------------------------------------------------------

    def slot_dir(self, slot: SlotName) -> Path:
        return self.root / f"slot-{slot}"

    def meta(self, slot: SlotName) -> SlotMeta | None:
        """The slot's metadata, or None when the slot is empty or half-written."""
        try:
            obj = json.loads((self.slot_dir(slot) / META_FILE).read_text())
            return SlotMeta(
                model_version_id=obj["model_version_id"],
                version=str(obj["version"]),
                sha256=str(obj["sha256"]),
            )
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def load_slot(self, slot: SlotName) -> LoadedModel:
        """Verify the slot's bundle again and load and self-test its model."""
        meta = self.meta(slot)
        if meta is None:
            raise InstallError("load", f"slot {slot} holds no complete bundle")
        path = self.slot_dir(slot) / BUNDLE_FILE
        try:
            verified = verify_bundle(path, public_key=self.public_key, target=self.target)
            runner = runner_for(verified.manifest, verified.model)
            self_test(verified.manifest, runner)
        except BundleError as err:
            raise InstallError("load", f"slot {slot}: {err}") from None
        return LoadedModel(slot=slot, meta=meta, manifest=verified.manifest, runner=runner)

    def write_slot(
        self, slot: SlotName, *, bundle_file: Path, meta: SlotMeta, move: bool = False
    ) -> None:
        """Put a verified bundle into ``slot``: metadata removed first, written last.

        ``move=True`` renames ``bundle_file`` into the slot instead of copying it (a
        finished download on the same file system: no second copy of the bytes).
        """
        folder = self.slot_dir(slot)
        (folder / META_FILE).unlink(missing_ok=True)
        if move:
            if self.durable:
                _fsync_file(bundle_file)
            os.replace(bundle_file, folder / BUNDLE_FILE)
        else:
            tmp = folder / (BUNDLE_FILE + ".tmp")
            shutil.copyfile(bundle_file, tmp)
            if self.durable:
                _fsync_file(tmp)
            os.replace(tmp, folder / BUNDLE_FILE)
        body = {"model_version_id": meta.model_version_id, "version": meta.version}
        body["sha256"] = meta.sha256
        # Written atomically and (durable) fsynced with its folder, which also makes the
        # bundle's rename above durable: the slot counts only once both are on flash.
        self._write(folder / META_FILE, json.dumps(body).encode())

    # --- start, switch, rollback -------------------------------------------------

    def start(self) -> LoadedModel | None:
        """Load the active slot at agent start, with probation and automatic rollback.

        Returns None when the device has no model yet (or none that loads).
        """
        for _ in range(self.max_failed_starts + 1):
            pointer = self.pointer()
            active = pointer.active
            if active is None:
                return None
            if not pointer.confirmed:
                # Counted BEFORE loading, so a crash while loading counts as a failure.
                pointer = Pointer(active, pointer.previous, False, pointer.failed_starts + 1)
                self._write_pointer(pointer)
            try:
                loaded = self.load_slot(active)
            except InstallError as err:
                log.error("start of slot %s failed: %s", active, err)
                # A confirmed model that no longer loads (damaged storage), or a new one
                # out of attempts: back to the previous slot if there is one.
                out_of_attempts = pointer.failed_starts >= self.max_failed_starts
                if (pointer.confirmed or out_of_attempts) and self.rollback(
                    reason=f"slot {active} does not start"
                ) is None:
                    return None
                continue
            if not pointer.confirmed:
                self._write_pointer(Pointer(pointer.active, pointer.previous, True, 0))
            return loaded
        return None

    def switch(self, slot: SlotName) -> None:
        """Make ``slot`` active on probation (one atomic write)."""
        current = self.pointer().active
        self._write_pointer(Pointer(slot, current, confirmed=False, failed_starts=0))

    def confirm(self, slot: SlotName) -> None:
        """End the probation of the active ``slot`` after a successful start."""
        pointer = self.pointer()
        if pointer.active == slot:
            self._write_pointer(Pointer(slot, pointer.previous, True, 0))

    def rollback(self, *, reason: str) -> SlotName | None:
        """Go back to the previous slot if it holds a bundle; returns the slot now active."""
        pointer = self.pointer()
        if pointer.previous is None or self.meta(pointer.previous) is None:
            log.error("cannot roll back (%s): no previous slot", reason)
            return None
        log.warning("rolling back to slot %s: %s", pointer.previous, reason)
        self._write_pointer(Pointer(pointer.previous, pointer.active, True, 0))
        return pointer.previous

    # --- downloads ----------------------------------------------------------------

    def download(self, ref: ArtifactRef) -> Download:
        """The (possibly resumed) download of ``ref``; other downloads are deleted."""
        folder = self.root / "downloads"
        for other in folder.glob("*.part"):
            if other.stem != ref.sha256:
                other.unlink(missing_ok=True)
        return Download(folder / f"{ref.sha256}.part", ref)


class Download:
    """One artifact being assembled from chunks on disk; memory use is one chunk.

    The file stays open (one descriptor per download) until :meth:`finish` or
    :meth:`discard`. Its whole-file SHA-256 is computed as chunks are accepted in order
    (a chunk that arrives early is read back once, when the chunks before it are in), so
    :meth:`finish` does not read the file again.
    """

    def __init__(self, path: Path, ref: ArtifactRef) -> None:
        self.path = Path(path)
        self.ref = ref
        self.rejected = 0
        self._received: set[int] = set()
        self._digest = hashlib.sha256()
        self._hashed = 0  # chunks 0 .. _hashed-1 are in _digest
        fresh = not self.path.exists()
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.ftruncate(self._fd, ref.size)
            if not fresh:
                self._rescan()
        except BaseException:
            self.close()
            raise

    def _rescan(self) -> None:
        for index in range(self.ref.chunks):
            data = self._read(index)
            if hashlib.sha256(data).hexdigest() == self.ref.chunk_sha256[index]:
                self._received.add(index)
        self._advance()

    def _open_fd(self) -> int:
        if self._fd is None:
            raise InstallError("download", "the download was already finished or discarded")
        return self._fd

    def _read(self, index: int) -> bytes:
        return os.pread(self._open_fd(), self._length(index), index * self.ref.chunk_size)

    def _advance(self) -> None:
        """Feed the digest every received chunk that follows the hashed prefix."""
        while self._hashed in self._received:
            self._digest.update(self._read(self._hashed))
            self._hashed += 1

    def _length(self, index: int) -> int:
        return min(self.ref.chunk_size, self.ref.size - index * self.ref.chunk_size)

    @property
    def transfer_id(self) -> str:
        return self.ref.sha256

    @property
    def received(self) -> int:
        return len(self._received)

    @property
    def complete(self) -> bool:
        return len(self._received) == self.ref.chunks

    def missing(self) -> list[int]:
        """Indices not received yet, in order."""
        return [i for i in range(self.ref.chunks) if i not in self._received]

    def accept(self, chunk: Chunk) -> bool:
        """Write ``chunk`` if it belongs here and matches its hash; False if ignored."""
        if chunk.transfer_id != self.ref.sha256:
            log.warning("ignored a chunk of another transfer %s", chunk.transfer_id[:12])
            return False
        if not 0 <= chunk.index < self.ref.chunks:
            log.warning("ignored chunk %d: out of range", chunk.index)
            return False
        if chunk.index in self._received:
            return False  # duplicate
        if (
            len(chunk.data) != self._length(chunk.index)
            or hashlib.sha256(chunk.data).hexdigest() != self.ref.chunk_sha256[chunk.index]
        ):
            self.rejected += 1
            log.warning("refused chunk %d: its hash does not match; fetching it again", chunk.index)
            return False
        written = os.pwrite(self._open_fd(), chunk.data, chunk.index * self.ref.chunk_size)
        if written != len(chunk.data):
            raise InstallError("download", f"short write of chunk {chunk.index} (disk full?)")
        self._received.add(chunk.index)
        if chunk.index == self._hashed:  # in order: hash the bytes in hand
            self._digest.update(chunk.data)
            self._hashed += 1
        self._advance()
        return True

    def finish(self) -> Path:
        """Check the whole file's SHA-256 and close it; raise InstallError if it differs.

        Not fsynced here: the file is made durable when it becomes a slot
        (:meth:`SlotStore.write_slot`); a ``.part`` that a crash damaged is re-hashed
        chunk by chunk on resume and the damaged chunks are fetched again.
        """
        if not self.complete or self._hashed != self.ref.chunks:
            raise InstallError("download", f"{self.missing()} chunks still missing")
        self.close()
        if self._digest.hexdigest() != self.ref.sha256:
            self.discard()
            raise InstallError("download", "downloaded file does not match its SHA-256")
        return self.path

    def close(self) -> None:
        """Close the file (kept on disk for a resume); idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)
        self._received.clear()


def install(
    store: SlotStore,
    *,
    bundle_file: Path,
    model_version_id: int | None,
    hold_before_switch_s: float = 0.0,
    move: bool = False,
) -> LoadedModel:
    """Verify, check the floor, self-test, write the inactive slot, switch, start, raise
    the floor. Raises InstallError (stage ``verify``, ``floor``, ``self-test``).

    ``model_version_id`` is what the device reports running: the id the signed manifest
    names wins; pass the command's id only when the command was signed (else None). The
    bundle is read once: the bytes verified are the bytes whose SHA-256 the slot's
    metadata records. ``move=True`` renames ``bundle_file`` into the slot (a finished
    download) instead of copying it; on failure the file is left where it was.
    ``hold_before_switch_s`` pauses after the slot is written and before the switch (a
    fault-injection hook for the crash-during-install test; 0 in service).
    """
    try:
        data = load_bundle_bytes(bundle_file)  # size-checked before it is read
        verified = verify_bundle(data, public_key=store.public_key, target=store.target)
    except BundleError as err:
        raise InstallError("verify", str(err)) from None
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        floor = store.floor()
    except FloorDamagedError as err:
        raise InstallError("floor", str(err)) from None
    why = refusal(floor, verified.manifest, sha256, task=store.task)
    if why is not None:
        raise InstallError("floor", why)
    try:
        runner = runner_for(verified.manifest, verified.model)
        self_test(verified.manifest, runner)
    except BundleError as err:
        raise InstallError("self-test", str(err)) from None
    slot = store.inactive_slot()
    bound = model_version_of(verified.manifest)
    meta = SlotMeta(
        model_version_id=bound if bound is not None else model_version_id,
        version=verified.manifest.version,
        sha256=sha256,
    )
    store.write_slot(slot, bundle_file=bundle_file, meta=meta, move=move)
    if hold_before_switch_s > 0:
        log.warning("holding %.1f s before the switch (fault injection)", hold_before_switch_s)
        time.sleep(hold_before_switch_s)
    # Raised before the switch: a crash in between leaves the old model running under the
    # new floor, which still admits this same bundle again, and never an older one.
    store.write_floor(raised(floor, verified.manifest, sha256))
    store.switch(slot)
    # This process already loaded and self-tested exactly these bytes: that is the new
    # slot's first successful start. Later starts (after a reboot or a crash) go through
    # SlotStore.start(), which rolls back a slot that fails max_failed_starts times.
    store.confirm(slot)
    return LoadedModel(slot=slot, meta=meta, manifest=verified.manifest, runner=runner)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _slot_or_none(value: object) -> SlotName | None:
    return value if value in SLOTS else None  # type: ignore[return-value]
