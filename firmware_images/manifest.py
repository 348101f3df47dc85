"""The bundle manifest: what a model is, what it was built for, and the hash that pins it.

The manifest is JSON in one canonical form (keys sorted, no spaces, ASCII, no NaN), so
the bytes that are signed are the bytes that are stored, and the same manifest always
serialises to the same bytes. Parsing is strict: an unknown or missing field, a wrong
type or an unknown schema version is refused with the field's name. The format is
documented in ``docs/bundle.md``.

Imports only the standard library (device side).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, cast

from firmware_images.errors import BundleFormatError

SCHEMA_VERSION = 3  # 2 added `latency`, 3 `release`; schemas 1 and 2 still read
READABLE_SCHEMAS = (1, 2, 3)
MAX_RELEASE = 2**53 - 1  # exact in every JSON reader
MAX_MANIFEST_BYTES = 256 * 1024

ModelFormat = Literal["onnx", "tflite"]
Precision = Literal["fp32", "fp16", "int8"]
FORMATS: tuple[ModelFormat, ...] = ("onnx", "tflite")
PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16", "int8")
MODEL_FILE_NAMES: dict[str, str] = {"onnx": "model.onnx", "tflite": "model.tflite"}

Decision = Literal["int8-faster", "fallback", "insisted", "other-arch", "too-large"]
"""Why an int8 recipe's bundle ships the precision it does (``latency.decision``):

- ``int8-faster``: int8's p50 is not above fp32's; int8 ships;
- ``fallback``: int8 is slower; fp32 ships;
- ``insisted``: int8 is slower, the recipe sets ``keep_int8_if_slower``; int8 ships;
- ``other-arch``: the build machine is not the target's architecture, so its timings
  say nothing about the device; the recipe's int8 ships;
- ``too-large``: int8 is slower, but fp32 is over the recipe's ``max_bytes``; int8 ships.
"""
DECISIONS: tuple[Decision, ...] = ("int8-faster", "fallback", "insisted", "other-arch", "too-large")

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as the application sees it.

    ``shape`` uses ``None`` for a dimension of any size (a dynamic batch);
    ``dtype`` is a numpy dtype name (``float32``).
    """

    name: str
    shape: tuple[int | None, ...]
    dtype: str


@dataclass(frozen=True)
class RuntimeSpec:
    """The runtime the model needs on the device (``onnxruntime`` or ``ai-edge-litert``).

    ``providers`` lists onnxruntime execution providers in order of preference (empty
    for ai-edge-litert); a device uses the first one it has.
    """

    name: str
    min_version: str
    providers: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelFile:
    """The model member of the bundle: its file name, SHA-256 (hex) and size in bytes."""

    file: str
    sha256: str
    size: int


@dataclass(frozen=True)
class ReferenceCheck:
    """A reference input and the exported model's own output for it, as the device's self-test.

    Values are flattened row-major; ``atol`` is the largest absolute difference per
    output value that the self-test accepts (it depends on the precision: see
    ``docs/bundle.md``).
    """

    input_shape: tuple[int, ...]
    input: tuple[float, ...]
    output_shape: tuple[int, ...]
    expected_output: tuple[float, ...]
    atol: float


@dataclass(frozen=True)
class AccuracyRecord:
    """The accuracy gate's measurement, in [0, 1] accuracies and percentage points.

    ``reference`` is the PyTorch model's accuracy on the held-out set, ``exported`` the
    exported model's run by ``runtime``; ``drop_points = 100 * (reference - exported)``.
    """

    reference: float
    exported: float
    drop_points: float
    max_drop_points: float
    heldout: str
    samples: int
    runtime: str


@dataclass(frozen=True)
class SourceRecord:
    """Where the weights came from: the checkpoint's SHA-256 and the registry version if any."""

    checkpoint_sha256: str
    model_version: str | None = None


@dataclass(frozen=True)
class LatencyRecord:
    """Both precisions timed on the build machine before an int8 recipe's bundle was built.

    ``fp32_p50_us`` and ``int8_p50_us`` are the median latency, in microseconds, of one
    inference (batch ``batch``, ``threads`` threads) through fedfleet's runner with
    ``runtime``, over ``runs`` calls each, on ``machine`` (architecture and CPU).
    ``decision`` says why the manifest's ``precision`` ships (:data:`Decision`).
    """

    fp32_p50_us: float
    int8_p50_us: float
    runs: int
    threads: int
    batch: int
    runtime: str
    machine: str
    decision: Decision


@dataclass(frozen=True)
class Manifest:
    """Everything a device needs to decide whether, and how, to run a bundle's model."""

    version: str
    created: str
    task: str
    target: str
    arch: str
    runtime: RuntimeSpec
    format: ModelFormat
    precision: Precision
    quantization: str
    model: ModelFile
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    reference: ReferenceCheck
    accuracy: AccuracyRecord
    source: SourceRecord
    key_id: str
    builder: str
    opset: int | None = None
    latency: LatencyRecord | None = None
    release: int | None = None
    schema: int = field(default=SCHEMA_VERSION)

    def __post_init__(self) -> None:
        _check_manifest(self)


_last_release = 0


def default_release() -> int:
    """The release number a build gets when none is given: the UTC time in milliseconds,
    and always above the last one this process handed out (two builds in one millisecond
    still increase). Builds for one target on several machines should pass ``--release``
    from one counter instead: clocks differ (``docs/bundle.md``, "Release numbers")."""
    global _last_release
    import time

    _last_release = max(time.time_ns() // 1_000_000, _last_release + 1)
    return _last_release


def to_canonical_bytes(manifest: Manifest) -> bytes:
    """The one byte string that represents ``manifest`` (what is stored and signed)."""
    obj = asdict(manifest)
    if manifest.schema == 1:
        del obj["latency"]  # schema 1 has no such field
    if manifest.schema < 3:
        del obj["release"]  # nor do schemas 1 and 2
    return canonical_json(obj)


def canonical_json(obj: Any) -> bytes:
    """Canonical JSON: sorted keys, no whitespace, ASCII only, finite numbers only."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def parse_manifest(data: bytes) -> Manifest:
    """Parse and validate manifest bytes; refuse anything but the canonical form of a
    readable schema (1 or 2)."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise BundleFormatError(
            f"manifest is {len(data)} bytes, more than the {MAX_MANIFEST_BYTES} allowed"
        )
    try:
        obj = json.loads(data.decode("ascii"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as err:
        raise BundleFormatError(f"manifest is not valid JSON ({err}); rebuild the bundle") from None
    if not isinstance(obj, dict):
        raise BundleFormatError("manifest must be a JSON object; rebuild the bundle")
    schema = obj.get("schema")
    if schema not in READABLE_SCHEMAS or isinstance(schema, bool):
        raise BundleFormatError(
            f"manifest schema {schema!r} is not supported (this fedfleet reads schemas "
            f"{', '.join(map(str, READABLE_SCHEMAS))}); upgrade fedfleet on this device or "
            "rebuild the bundle"
        )
    reader = _Reader(obj, "manifest")
    manifest = Manifest(
        schema=reader.integer("schema"),
        version=reader.text("version"),
        created=reader.text("created"),
        task=reader.text("task"),
        target=reader.text("target"),
        arch=reader.text("arch"),
        runtime=_runtime(reader.obj("runtime")),
        format=cast(ModelFormat, reader.choice("format", FORMATS)),
        precision=cast(Precision, reader.choice("precision", PRECISIONS)),
        quantization=reader.text("quantization"),
        model=_model_file(reader.obj("model")),
        inputs=tuple(_tensor(r) for r in reader.objs("inputs")),
        outputs=tuple(_tensor(r) for r in reader.objs("outputs")),
        reference=_reference(reader.obj("reference")),
        accuracy=_accuracy(reader.obj("accuracy")),
        source=_source(reader.obj("source")),
        key_id=reader.text("key_id"),
        builder=reader.text("builder"),
        opset=reader.opt_integer("opset"),
        latency=_latency(reader.opt_obj("latency")) if schema >= 2 else None,
        release=reader.integer("release") if schema >= 3 else None,
    )
    reader.done()
    if to_canonical_bytes(manifest) != data:
        raise BundleFormatError("manifest is not in canonical form; rebuild the bundle")
    return manifest


# --- validation -----------------------------------------------------------------------


def _check_manifest(m: Manifest) -> None:
    if m.schema not in READABLE_SCHEMAS:
        raise BundleFormatError(
            f"manifest.schema must be one of {READABLE_SCHEMAS}, got {m.schema}"
        )
    if m.latency is not None:
        _check_latency(m.latency, m.schema)
    _check_release(m.release, m.schema)
    for name in ("task", "target"):
        if not _NAME.match(getattr(m, name)):
            raise BundleFormatError(
                f"manifest.{name} {getattr(m, name)!r} must be lower-case letters, digits, . _ -"
            )
    if not m.version or len(m.version) > 128:
        raise BundleFormatError("manifest.version must be 1 to 128 characters")
    if m.format not in FORMATS:
        raise BundleFormatError(f"manifest.format must be one of {FORMATS}, got {m.format!r}")
    if m.precision not in PRECISIONS:
        raise BundleFormatError(
            f"manifest.precision must be one of {PRECISIONS}, got {m.precision!r}"
        )
    if m.model.file != MODEL_FILE_NAMES[m.format]:
        raise BundleFormatError(
            f"manifest.model.file must be {MODEL_FILE_NAMES[m.format]!r} for format {m.format}"
        )
    if not _SHA256.match(m.model.sha256) or not _SHA256.match(m.source.checkpoint_sha256):
        raise BundleFormatError("manifest hashes must be 64 lower-case hex digits (SHA-256)")
    if m.model.size <= 0:
        raise BundleFormatError("manifest.model.size must be a positive number of bytes")
    if not m.inputs or not m.outputs:
        raise BundleFormatError("manifest must list at least one input and one output")
    ref = m.reference
    if math.prod(ref.input_shape) != len(ref.input) or math.prod(ref.output_shape) != len(
        ref.expected_output
    ):
        raise BundleFormatError("manifest.reference values do not match their shapes")
    if not (ref.atol > 0 and math.isfinite(ref.atol)):
        raise BundleFormatError("manifest.reference.atol must be a positive number")
    if not m.key_id.startswith("ed25519:"):
        raise BundleFormatError("manifest.key_id must start with 'ed25519:'")


def _check_release(release: int | None, schema: int) -> None:
    if schema < 3:
        if release is not None:
            raise BundleFormatError("manifest.release needs schema 3; rebuild the bundle")
        return
    if release is None or isinstance(release, bool) or not 1 <= release <= MAX_RELEASE:
        raise BundleFormatError(
            f"manifest.release must be an integer in 1..{MAX_RELEASE} (the bundle's release "
            "number for its target; `fedfleet image build --release N`)"
        )


def _check_latency(lat: LatencyRecord, schema: int) -> None:
    if schema < 2:
        raise BundleFormatError("manifest.latency needs schema 2; rebuild the bundle")
    for name in ("fp32_p50_us", "int8_p50_us"):
        value = getattr(lat, name)
        if not (value > 0 and math.isfinite(value)):
            raise BundleFormatError(f"manifest.latency.{name} must be a positive number")
    if lat.decision not in DECISIONS:
        raise BundleFormatError(f"manifest.latency.decision must be one of {', '.join(DECISIONS)}")
    if lat.runs < 1 or lat.threads < 1 or lat.batch < 1:
        raise BundleFormatError("manifest.latency runs, threads and batch must be >= 1")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


class _Reader:
    """Takes fields out of one JSON object, checking types; ``done`` refuses leftovers."""

    def __init__(self, obj: dict[str, Any], where: str) -> None:
        self._obj = dict(obj)
        self._where = where

    def _take(self, key: str) -> Any:
        if key not in self._obj:
            raise BundleFormatError(f"{self._where}.{key} is missing; rebuild the bundle")
        return self._obj.pop(key)

    def _fail(self, key: str, expected: str) -> BundleFormatError:
        return BundleFormatError(f"{self._where}.{key} must be {expected}; rebuild the bundle")

    def text(self, key: str) -> str:
        value = self._take(key)
        if not isinstance(value, str):
            raise self._fail(key, "a string")
        return value

    def opt_text(self, key: str) -> str | None:
        value = self._take(key)
        if value is not None and not isinstance(value, str):
            raise self._fail(key, "a string or null")
        return value

    def integer(self, key: str) -> int:
        value = self._take(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._fail(key, "an integer")
        return value

    def opt_integer(self, key: str) -> int | None:
        value = self._take(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise self._fail(key, "an integer or null")
        return value

    def number(self, key: str) -> float:
        value = self._take(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise self._fail(key, "a number")
        return float(value)

    def choice(self, key: str, options: tuple[str, ...]) -> str:
        value = self.text(key)
        if value not in options:
            raise self._fail(key, f"one of {', '.join(options)}")
        return value

    def obj(self, key: str) -> _Reader:
        value = self._take(key)
        if not isinstance(value, dict):
            raise self._fail(key, "an object")
        return _Reader(value, f"{self._where}.{key}")

    def opt_obj(self, key: str) -> _Reader | None:
        if self._obj.get(key, ...) is None:
            self._take(key)
            return None
        return self.obj(key)

    def objs(self, key: str) -> list[_Reader]:
        value = self._take(key)
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self._fail(key, "a list of objects")
        return [_Reader(v, f"{self._where}.{key}[{i}]") for i, v in enumerate(value)]

    def ints(self, key: str, *, nullable: bool = False) -> tuple[Any, ...]:
        value = self._take(key)
        ok = isinstance(value, list) and all(
            (isinstance(v, int) and not isinstance(v, bool) and v >= 0) or (nullable and v is None)
            for v in value
        )
        if not ok:
            raise self._fail(key, "a list of non-negative integers")
        return tuple(value)

    def strs(self, key: str) -> tuple[str, ...]:
        value = self._take(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._fail(key, "a list of strings")
        return tuple(value)

    def floats(self, key: str) -> tuple[float, ...]:
        value = self._take(key)
        ok = isinstance(value, list) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        )
        if not ok:
            raise self._fail(key, "a list of numbers")
        return tuple(float(v) for v in value)

    def done(self) -> None:
        if self._obj:
            unknown = ", ".join(sorted(self._obj))
            raise BundleFormatError(
                f"{self._where} has unknown field(s) {unknown}; this fedfleet reads manifest "
                f"schema {SCHEMA_VERSION} at most — upgrade fedfleet or rebuild the bundle"
            )


def _runtime(r: _Reader) -> RuntimeSpec:
    spec = RuntimeSpec(
        name=r.text("name"), min_version=r.text("min_version"), providers=r.strs("providers")
    )
    r.done()
    return spec


def _model_file(r: _Reader) -> ModelFile:
    spec = ModelFile(file=r.text("file"), sha256=r.text("sha256"), size=r.integer("size"))
    r.done()
    return spec


def _tensor(r: _Reader) -> TensorSpec:
    spec = TensorSpec(
        name=r.text("name"), shape=r.ints("shape", nullable=True), dtype=r.text("dtype")
    )
    r.done()
    return spec


def _reference(r: _Reader) -> ReferenceCheck:
    spec = ReferenceCheck(
        input_shape=r.ints("input_shape"),
        input=r.floats("input"),
        output_shape=r.ints("output_shape"),
        expected_output=r.floats("expected_output"),
        atol=r.number("atol"),
    )
    r.done()
    return spec


def _accuracy(r: _Reader) -> AccuracyRecord:
    spec = AccuracyRecord(
        reference=r.number("reference"),
        exported=r.number("exported"),
        drop_points=r.number("drop_points"),
        max_drop_points=r.number("max_drop_points"),
        heldout=r.text("heldout"),
        samples=r.integer("samples"),
        runtime=r.text("runtime"),
    )
    r.done()
    return spec


def _latency(r: _Reader | None) -> LatencyRecord | None:
    if r is None:
        return None
    spec = LatencyRecord(
        fp32_p50_us=r.number("fp32_p50_us"),
        int8_p50_us=r.number("int8_p50_us"),
        runs=r.integer("runs"),
        threads=r.integer("threads"),
        batch=r.integer("batch"),
        runtime=r.text("runtime"),
        machine=r.text("machine"),
        decision=cast(Decision, r.choice("decision", DECISIONS)),
    )
    r.done()
    return spec


def _source(r: _Reader) -> SourceRecord:
    spec = SourceRecord(
        checkpoint_sha256=r.text("checkpoint_sha256"), model_version=r.opt_text("model_version")
    )
    r.done()
    return spec
