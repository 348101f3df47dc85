"""Per-target build recipes (``firmware_images/targets/*.toml``) and their registry.

A recipe says how to build a model for one kind of device: the runtime it runs there
(and its minimum version and execution providers), the format and precision, how to
quantize and calibrate, the input batch, the size limit, and how much accuracy the
export may cost. Recipes are parsed strictly: an unknown key, a wrong type, or a
combination no runtime can run (TFLite on onnxruntime, fp16 on ai-edge-litert, int8
without calibration, 32-bit ARM) is refused with the key's name and the fix.

Imports only the standard library (the device side looks targets up too).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, cast

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack 6)
    import tomli as tomllib

from firmware_images.manifest import FORMATS, PRECISIONS, ModelFormat, Precision

RuntimeName = Literal["onnxruntime", "ai-edge-litert"]
QuantMethod = Literal["none", "fp16-cast", "static-qdq", "litert-static"]
RUNTIMES: tuple[RuntimeName, ...] = ("onnxruntime", "ai-edge-litert")
ARCHES = ("x86_64", "aarch64")

# (runtime, format, precision) -> the only quantization method that builds it.
SUPPORTED: dict[tuple[str, str, str], QuantMethod] = {
    ("onnxruntime", "onnx", "fp32"): "none",
    ("onnxruntime", "onnx", "fp16"): "fp16-cast",
    ("onnxruntime", "onnx", "int8"): "static-qdq",
    ("ai-edge-litert", "tflite", "fp32"): "none",
    ("ai-edge-litert", "tflite", "int8"): "litert-static",
}
RUNTIME_FORMAT: dict[str, str] = {"onnxruntime": "onnx", "ai-edge-litert": "tflite"}
KNOWN_PROVIDERS = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "OpenVINOExecutionProvider",
    "XnnpackExecutionProvider",
    "ACLExecutionProvider",
    "ArmNNExecutionProvider",
    "QNNExecutionProvider",
    "CoreMLExecutionProvider",
    "DmlExecutionProvider",
    "CPUExecutionProvider",
)
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "DmlExecutionProvider")
# Highest ONNX opset each onnxruntime release implements (onnxruntime's compatibility
# table). Releases after the last row are assumed to run at least its opset.
ORT_MAX_OPSET: tuple[tuple[tuple[int, int], int], ...] = (
    ((1, 14), 18),
    ((1, 15), 19),
    ((1, 16), 19),
    ((1, 17), 20),
    ((1, 18), 21),
)
MIN_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear need opset 13
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
ACTIVATION_TYPES = ("int8", "uint8")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_VERSION = re.compile(r"^\d+(\.\d+){1,2}$")


class RecipeError(ValueError):
    """A recipe file is malformed or asks for something no runtime can run."""


@dataclass(frozen=True)
class RuntimeRecipe:
    """The device runtime: its package name, minimum version, providers and threads."""

    name: RuntimeName
    min_version: str
    providers: tuple[str, ...]
    threads: int


@dataclass(frozen=True)
class ModelRecipe:
    """The exported model: format, precision, ONNX opset, input batch, size limit (bytes)."""

    format: ModelFormat
    precision: Precision
    opset: int | None
    batch: int | None  # None: any batch size (ONNX only)
    max_bytes: int


@dataclass(frozen=True)
class QuantizationRecipe:
    """How to quantize: method, calibration set size, and static-QDQ settings.

    ``calibration_samples`` samples are drawn (seeded) from the task's TRAINING split;
    the held-out test split is never used to calibrate. ``keep_int8_if_slower``: ship
    int8 even where the build measures it slower than fp32 (default: fall back to fp32;
    see :mod:`firmware_images.latency`).
    """

    method: QuantMethod
    calibration_samples: int = 0
    per_channel: bool = True
    activation_type: str = "int8"
    calibrate_method: str = "minmax"
    keep_int8_if_slower: bool = False


@dataclass(frozen=True)
class GateRecipe:
    """The accuracy gate: the largest accuracy drop (percentage points) a build may cost."""

    max_accuracy_drop: float = 1.0


@dataclass(frozen=True)
class Recipe:
    """A complete build recipe for one target."""

    name: str
    description: str
    arch: str
    runtime: RuntimeRecipe
    model: ModelRecipe
    quantization: QuantizationRecipe
    gate: GateRecipe


# --- parsing ----------------------------------------------------------------------------


def parse_recipe(text: str, *, source: str = "<recipe>") -> Recipe:
    """Parse recipe TOML text strictly; ``source`` names the file in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise RecipeError(f"{source}: not valid TOML ({err})") from None
    top = _Table(data, source, "")
    name = top.text("name")
    if not _NAME.match(name):
        raise RecipeError(f"{source}: name {name!r} must be lower-case letters, digits, . _ -")
    description = top.text("description")
    arch = top.text("arch")
    if arch in ("armv7l", "armv7", "armhf", "arm"):
        raise RecipeError(
            f"{source}: arch {arch!r} is not supported: neither onnxruntime nor ai-edge-litert "
            "ships 32-bit ARM wheels; use a 64-bit OS (aarch64)"
        )
    if arch not in ARCHES:
        raise RecipeError(f"{source}: arch must be one of {', '.join(ARCHES)}, got {arch!r}")
    runtime = _runtime(top.table("runtime"))
    model = _model(top.table("model"), runtime)
    quant = _quantization(top.optional_table("quantization"), runtime, model)
    gate_table = top.optional_table("gate")
    gate = GateRecipe()
    if gate_table is not None:
        drop = gate_table.number("max_accuracy_drop", default=1.0)
        if not 0.0 <= drop <= 100.0:
            raise gate_table.error("max_accuracy_drop", "a number of percentage points in [0, 100]")
        gate_table.done()
        gate = GateRecipe(max_accuracy_drop=drop)
    top.done()
    return Recipe(
        name=name,
        description=description,
        arch=arch,
        runtime=runtime,
        model=model,
        quantization=quant,
        gate=gate,
    )


def load_recipe(path: Path) -> Recipe:
    """Parse a recipe file; its file name must be ``<name>.toml``."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {path} not found")
    recipe = parse_recipe(path.read_text(encoding="utf-8"), source=str(path))
    if path.stem != recipe.name:
        raise RecipeError(f"{path}: name {recipe.name!r} must match the file name {path.stem!r}")
    return recipe


def _runtime(t: _Table) -> RuntimeRecipe:
    name = t.text("name")
    if name not in RUNTIMES:
        hint = " (tflite-runtime needs numpy<2; use ai-edge-litert)" if "tflite" in name else ""
        raise t.error("name", f"one of {', '.join(RUNTIMES)}{hint}")
    min_version = t.text("min_version")
    if not _VERSION.match(min_version):
        raise t.error("min_version", "a version like '1.17' or '1.17.3'")
    if name == "onnxruntime" and parse_version(min_version) < (1, 14):
        raise t.error("min_version", "at least '1.14' (fedfleet exports ONNX opset >= 13, IR 8)")
    providers = t.strings("providers", default=())
    if name == "ai-edge-litert" and providers:
        raise RecipeError(f"{t.where('providers')} is an onnxruntime setting; remove it")
    if name == "onnxruntime":
        if not providers:
            providers = ("CPUExecutionProvider",)
        unknown = [p for p in providers if p not in KNOWN_PROVIDERS]
        if unknown:
            raise t.error("providers", f"names from {', '.join(KNOWN_PROVIDERS)} (got {unknown})")
        if len(set(providers)) != len(providers):
            raise t.error("providers", "a list without duplicates")
        if providers[-1] != "CPUExecutionProvider":
            raise t.error(
                "providers",
                "a list ending with CPUExecutionProvider (the fallback every device has)",
            )
    threads = t.integer("threads", default=1)
    if not 1 <= threads <= 256:
        raise t.error("threads", "an integer in [1, 256]")
    t.done()
    return RuntimeRecipe(
        name=cast(RuntimeName, name), min_version=min_version, providers=providers, threads=threads
    )


def _model(t: _Table, runtime: RuntimeRecipe) -> ModelRecipe:
    fmt = t.text("format")
    if fmt not in FORMATS:
        raise t.error("format", f"one of {', '.join(FORMATS)}")
    if RUNTIME_FORMAT[runtime.name] != fmt:
        raise RecipeError(
            f"{t.where('format')}: a {fmt} model does not run on {runtime.name}; use format "
            f"{RUNTIME_FORMAT[runtime.name]!r} or the runtime that runs {fmt}"
        )
    precision = t.text("precision")
    if precision not in PRECISIONS:
        raise t.error("precision", f"one of {', '.join(PRECISIONS)}")
    if (runtime.name, fmt, precision) not in SUPPORTED:
        ok = [p for (r, f, p) in SUPPORTED if r == runtime.name]
        raise RecipeError(
            f"{t.where('precision')}: {runtime.name} recipes support {', '.join(ok)}, "
            f"not {precision}"
        )
    if precision == "fp16" and not any(p in GPU_PROVIDERS for p in runtime.providers):
        raise RecipeError(
            f"{t.where('precision')}: fp16 needs a GPU provider (TensorRT or CUDA) first in "
            "runtime.providers; on the CPU provider fp16 only adds casts — use fp32 or int8"
        )
    opset: int | None = None
    if fmt == "onnx":
        opset = t.integer("opset", default=18)
        limit = ort_max_opset(runtime.min_version)
        if not MIN_OPSET <= opset <= limit:
            raise RecipeError(
                f"{t.where('opset')}: must be in [{MIN_OPSET}, {limit}]: onnxruntime "
                f"{runtime.min_version} implements opsets up to {limit}"
            )
    elif "opset" in t:
        raise RecipeError(f"{t.where('opset')} is an ONNX setting; remove it for {fmt}")
    batch_value = t.raw("batch", default="dynamic" if fmt == "onnx" else 1)
    batch: int | None
    if batch_value == "dynamic":
        if fmt == "tflite":
            raise RecipeError(
                f"{t.where('batch')}: TFLite models are converted with a fixed batch; use 1"
            )
        batch = None
    elif isinstance(batch_value, int) and not isinstance(batch_value, bool) and batch_value >= 1:
        batch = batch_value
    else:
        raise t.error("batch", "'dynamic' or a positive integer")
    max_bytes = t.integer("max_bytes")
    if max_bytes <= 0:
        raise t.error("max_bytes", "a positive number of bytes")
    t.done()
    return ModelRecipe(
        format=cast(ModelFormat, fmt),
        precision=cast(Precision, precision),
        opset=opset,
        batch=batch,
        max_bytes=max_bytes,
    )


def _quantization(
    t: _Table | None, runtime: RuntimeRecipe, model: ModelRecipe
) -> QuantizationRecipe:
    method = SUPPORTED[(runtime.name, model.format, model.precision)]
    if method in ("none", "fp16-cast"):
        if t is not None:
            raise RecipeError(
                f"{t.where('')}[quantization] is only for int8 recipes; remove it "
                f"({model.precision} needs no calibration)"
            )
        return QuantizationRecipe(method=method)
    if t is None:
        raise RecipeError(
            f"int8 on {runtime.name} needs a [quantization] table with method = {method!r} "
            "and calibration_samples"
        )
    given = t.text("method")
    if given != method:
        raise RecipeError(
            f"{t.where('method')}: int8 {model.format} on {runtime.name} is built with "
            f"{method!r}, not {given!r}"
        )
    samples = t.integer("calibration_samples")
    if not 16 <= samples <= 100_000:
        raise t.error("calibration_samples", "an integer in [16, 100000]")
    keep = t.boolean("keep_int8_if_slower", default=False)
    if method == "static-qdq":
        per_channel = t.boolean("per_channel", default=True)
        activation = t.text("activation_type", default="int8")
        if activation not in ACTIVATION_TYPES:
            raise t.error("activation_type", f"one of {', '.join(ACTIVATION_TYPES)}")
        calibrate = t.text("calibrate_method", default="minmax")
        if calibrate not in CALIBRATION_METHODS:
            raise t.error("calibrate_method", f"one of {', '.join(CALIBRATION_METHODS)}")
        t.done()
        return QuantizationRecipe(
            method=method,
            calibration_samples=samples,
            per_channel=per_channel,
            activation_type=activation,
            calibrate_method=calibrate,
            keep_int8_if_slower=keep,
        )
    t.done()  # litert-static: the LiteRT quantizer's static int8 recipe has no knobs here
    return QuantizationRecipe(method=method, calibration_samples=samples, keep_int8_if_slower=keep)


def parse_version(text: str) -> tuple[int, ...]:
    """``'1.17.3'`` → ``(1, 17, 3)``; anything after the numeric part is ignored."""
    match = re.match(r"^(\d+(?:\.\d+)*)", text)
    if not match:
        raise ValueError(f"not a version: {text!r}")
    return tuple(int(p) for p in match.group(1).split("."))


def ort_max_opset(min_version: str) -> int:
    """The highest opset that every onnxruntime release from ``min_version`` on implements."""
    major_minor = parse_version(min_version)[:2]
    best = 0
    for version, opset in ORT_MAX_OPSET:
        if major_minor >= version:
            best = opset
    return best


class _Table:
    """Reads keys out of one TOML table with type checks; ``done`` refuses unknown keys."""

    def __init__(self, data: dict[str, Any], source: str, prefix: str) -> None:
        self._data = dict(data)
        self._source = source
        self._prefix = prefix

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def where(self, key: str) -> str:
        return f"{self._source}: {self._prefix}{key}"

    def error(self, key: str, expected: str) -> RecipeError:
        return RecipeError(f"{self.where(key)} must be {expected}")

    def raw(self, key: str, *, default: Any = ...) -> Any:
        if key not in self._data:
            if default is ...:
                raise RecipeError(f"{self.where(key)} is missing; add it to the recipe")
            return default
        return self._data.pop(key)

    def text(self, key: str, *, default: Any = ...) -> str:
        value = self.raw(key, default=default)
        if not isinstance(value, str) or not value:
            raise self.error(key, "a non-empty string")
        return value

    def integer(self, key: str, *, default: Any = ...) -> int:
        value = self.raw(key, default=default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.error(key, "an integer")
        return value

    def number(self, key: str, *, default: Any = ...) -> float:
        value = self.raw(key, default=default)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise self.error(key, "a number")
        return float(value)

    def boolean(self, key: str, *, default: Any = ...) -> bool:
        value = self.raw(key, default=default)
        if not isinstance(value, bool):
            raise self.error(key, "true or false")
        return value

    def strings(self, key: str, *, default: Any = ...) -> tuple[str, ...]:
        value = self.raw(key, default=default)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise self.error(key, "a list of strings")
        return tuple(value)

    def table(self, key: str) -> _Table:
        value = self.raw(key)
        if not isinstance(value, dict):
            raise self.error(key, "a table")
        return _Table(value, self._source, f"{self._prefix}{key}.")

    def optional_table(self, key: str) -> _Table | None:
        if key not in self._data:
            return None
        return self.table(key)

    def done(self) -> None:
        if self._data:
            unknown = ", ".join(f"{self._prefix}{k}" for k in sorted(self._data))
            raise RecipeError(f"{self._source}: unknown key(s) {unknown}; check the spelling")


# --- registry ---------------------------------------------------------------------------

_TARGETS: dict[str, Recipe] = {}
_BUILTIN_LOADED = False


def register_target(recipe: Recipe) -> Recipe:
    """Add ``recipe`` to the registry; refuse a name that is already registered."""
    _load_builtin()
    if recipe.name in _TARGETS:
        raise ValueError(f"target {recipe.name!r} is already registered; choose another name")
    _TARGETS[recipe.name] = recipe
    return recipe


def get_target(name: str) -> Recipe:
    """Look a target up by name; the error lists the valid names."""
    _load_builtin()
    try:
        return _TARGETS[name]
    except KeyError:
        raise ValueError(
            f"unknown target {name!r}; choose one of: {', '.join(available_targets())} "
            "(or pass the path of a recipe .toml file)"
        ) from None


def available_targets() -> list[str]:
    """Names of every registered target, sorted."""
    _load_builtin()
    return sorted(_TARGETS)


def resolve_target(name_or_path: str) -> Recipe:
    """A registered target by name, or a recipe file when the argument ends in ``.toml``."""
    if name_or_path.endswith(".toml"):
        return load_recipe(Path(name_or_path))
    return get_target(name_or_path)


def builtin_recipe_files() -> list[Path]:
    """The recipe files shipped in ``firmware_images/targets/``."""
    folder = resources.files("firmware_images") / "targets"
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".toml"))


def _load_builtin() -> None:
    global _BUILTIN_LOADED
    if _BUILTIN_LOADED:
        return
    _BUILTIN_LOADED = True
    for path in builtin_recipe_files():
        recipe = load_recipe(path)
        if recipe.name in _TARGETS:
            raise ValueError(f"target {recipe.name!r} is defined twice ({path})")
        _TARGETS[recipe.name] = recipe
