"""Target recipes: the shipped ones, strict parsing, impossible combinations, the registry."""

from __future__ import annotations

import dataclasses
import re

import pytest

from firmware_images import targets as targets_module
from firmware_images.targets import (
    RecipeError,
    available_targets,
    builtin_recipe_files,
    get_target,
    load_recipe,
    ort_max_opset,
    parse_recipe,
    register_target,
    resolve_target,
)

BASE = """
name = "t"
description = "test target"
arch = "x86_64"

[runtime]
name = "onnxruntime"
min_version = "1.17"
providers = ["CPUExecutionProvider"]
threads = 1

[model]
format = "onnx"
precision = "int8"
opset = 18
batch = "dynamic"
max_bytes = 1000000

[quantization]
method = "static-qdq"
calibration_samples = 64

[gate]
max_accuracy_drop = 1.0
"""

TFLITE = """
name = "t"
description = "test target"
arch = "aarch64"

[runtime]
name = "ai-edge-litert"
min_version = "1.2"

[model]
format = "tflite"
precision = "int8"
batch = 1
max_bytes = 1000000

[quantization]
method = "litert-static"
calibration_samples = 64
"""


def _sub(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def test_builtin_targets_are_the_four_devices_and_parse():
    assert available_targets() == ["cpu-x86", "jetson-orin", "rpi4", "rpi5"]
    assert [p.stem for p in builtin_recipe_files()] == available_targets()
    rpi4, rpi5 = get_target("rpi4"), get_target("rpi5")
    assert (rpi4.runtime.name, rpi4.model.format, rpi4.model.precision) == (
        "ai-edge-litert",
        "tflite",
        "int8",
    )
    assert rpi4.quantization.method == "litert-static" and rpi4.model.batch == 1
    assert (rpi5.model.format, rpi5.model.precision, rpi5.quantization.method) == (
        "onnx",
        "int8",
        "static-qdq",
    )
    jetson = get_target("jetson-orin")
    assert jetson.model.precision == "fp16"
    assert jetson.runtime.providers[0] == "TensorrtExecutionProvider"
    assert jetson.runtime.providers[-1] == "CPUExecutionProvider"
    assert get_target("cpu-x86").arch == "x86_64"
    assert all(get_target(n).gate.max_accuracy_drop == 1.0 for n in available_targets())


def test_minimal_recipes_parse_with_defaults():
    recipe = parse_recipe(_sub(BASE, "[gate]\nmax_accuracy_drop = 1.0\n", ""))
    assert recipe.gate.max_accuracy_drop == 1.0
    assert recipe.quantization.per_channel is True
    tflite = parse_recipe(TFLITE)
    assert tflite.runtime.providers == () and tflite.model.opset is None
    assert not recipe.quantization.keep_int8_if_slower  # default: fall back to fp32
    assert not tflite.quantization.keep_int8_if_slower


@pytest.mark.parametrize("text", [BASE, TFLITE])
def test_an_int8_recipe_can_insist_on_int8(text):
    line = "calibration_samples = 64\n"
    insisting = parse_recipe(_sub(text, line, line + "keep_int8_if_slower = true\n"))
    assert insisting.quantization.keep_int8_if_slower is True
    with pytest.raises(RecipeError, match="keep_int8_if_slower must be true or false"):
        parse_recipe(_sub(text, line, line + 'keep_int8_if_slower = "yes"\n'))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('arch = "x86_64"', 'arch = "x86_64"\ncolour = "red"', "unknown key.*colour"),
        ("threads = 1", "thread = 1", r"unknown key.*runtime\.thread"),
        ("max_bytes = 1000000", "max_bytes = 1000000\nmaxbytes = 5", r"model\.maxbytes"),
        (
            "calibration_samples = 64",
            "calibration_samples = 64\nsamples = 3",
            "quantization.samples",
        ),
        ("max_accuracy_drop = 1.0", "max_drop = 1.0", r"gate\.max_drop"),
        ('name = "t"', 'name = "Bad Name"', "lower-case"),
        ('description = "test target"\n', "", "description is missing"),
        ("threads = 1", 'threads = "4"', "threads must be an integer"),
        ("threads = 1", "threads = 0", r"threads must be an integer in \[1, 256\]"),
        ("max_bytes = 1000000", "max_bytes = 0", "max_bytes must be a positive"),
        ("max_accuracy_drop = 1.0", "max_accuracy_drop = 150", r"percentage points in \[0, 100\]"),
        ("calibration_samples = 64", "calibration_samples = 3", r"calibration_samples must be"),
        ('batch = "dynamic"', 'batch = "any"', "'dynamic' or a positive integer"),
        ('arch = "x86_64"', 'arch = "riscv64"', "arch must be one of"),
        ('min_version = "1.17"', 'min_version = "latest"', "a version like"),
    ],
)
def test_unknown_keys_and_bad_values_are_refused(old, new, message):
    with pytest.raises(RecipeError, match=message):
        parse_recipe(_sub(BASE, old, new))


@pytest.mark.parametrize(
    ("base", "old", "new", "message"),
    [
        # format and runtime must agree
        (BASE, 'format = "onnx"', 'format = "tflite"', "tflite model does not run on onnxruntime"),
        (
            TFLITE,
            'format = "tflite"',
            'format = "onnx"',
            "onnx model does not run on ai-edge-litert",
        ),
        # precision the runtime cannot run from fedfleet's exports
        (TFLITE, 'precision = "int8"', 'precision = "fp16"', "support fp32, int8, not fp16"),
        # int8 needs its calibration table, with the method of its format
        (BASE, "[quantization]\nmethod", "[unused]\nmethod", "needs a \\[quantization\\] table"),
        (BASE, 'method = "static-qdq"', 'method = "litert-static"', "built with 'static-qdq'"),
        (BASE, 'method = "static-qdq"', 'method = "dynamic"', "built with 'static-qdq'"),
        (
            TFLITE,
            "calibration_samples = 64",
            "calibration_samples = 64\nper_channel = true",
            "unknown key",
        ),
        # fp32 takes no quantization table
        (BASE, 'precision = "int8"', 'precision = "fp32"', "only for int8 recipes"),
        # no 32-bit ARM wheels exist for either runtime
        (BASE, 'arch = "x86_64"', 'arch = "armv7l"', "32-bit ARM"),
        # tflite-runtime is not a supported runtime
        (TFLITE, 'name = "ai-edge-litert"', 'name = "tflite-runtime"', "numpy<2"),
        # providers are an onnxruntime setting, CPU must be the last fallback
        (
            TFLITE,
            'min_version = "1.2"',
            'min_version = "1.2"\nproviders = ["CPUExecutionProvider"]',
            "onnxruntime setting",
        ),
        (
            BASE,
            '["CPUExecutionProvider"]',
            '["CPUExecutionProvider", "CUDAExecutionProvider"]',
            "ending with CPUExecutionProvider",
        ),
        (BASE, '["CPUExecutionProvider"]', '["GPUProvider", "CPUExecutionProvider"]', "names from"),
        (
            BASE,
            '["CPUExecutionProvider"]',
            '["CPUExecutionProvider", "CPUExecutionProvider"]',
            "without duplicates",
        ),
        # fp16 only on a GPU provider
        (
            _sub(BASE, '[quantization]\nmethod = "static-qdq"\ncalibration_samples = 64\n', ""),
            'precision = "int8"',
            'precision = "fp16"',
            "fp16 needs a GPU provider",
        ),
        # opset within what the minimum runtime implements
        (
            _sub(BASE, 'min_version = "1.17"', 'min_version = "1.14"'),
            "opset = 18",
            "opset = 19",
            r"must be in \[13, 18\]: onnxruntime 1.14 implements opsets up to 18",
        ),
        (BASE, "opset = 18", "opset = 12", r"must be in \[13, 20\]"),
        (BASE, 'min_version = "1.17"', 'min_version = "1.12"', "at least '1.14'"),
        (TFLITE, "batch = 1", "batch = 1\nopset = 18", "ONNX setting"),
        (TFLITE, "batch = 1", 'batch = "dynamic"', "fixed batch"),
    ],
)
def test_impossible_combinations_are_refused(base, old, new, message):
    with pytest.raises(RecipeError, match=message):
        parse_recipe(_sub(base, old, new))


def test_fp16_with_a_gpu_provider_parses():
    text = _sub(BASE, '[quantization]\nmethod = "static-qdq"\ncalibration_samples = 64\n', "")
    text = _sub(text, 'precision = "int8"', 'precision = "fp16"')
    text = _sub(
        text, '["CPUExecutionProvider"]', '["CUDAExecutionProvider", "CPUExecutionProvider"]'
    )
    recipe = parse_recipe(text)
    assert recipe.quantization.method == "fp16-cast"


def test_a_value_where_a_table_belongs_is_refused():
    text = _sub(
        _sub(BASE, "[gate]\nmax_accuracy_drop = 1.0\n", ""), 'name = "t"', 'name = "t"\ngate = 3'
    )
    with pytest.raises(RecipeError, match="gate must be a table"):
        parse_recipe(text)


def test_invalid_toml_names_the_file():
    with pytest.raises(RecipeError, match=re.escape("my.toml: not valid TOML")):
        parse_recipe("name = ", source="my.toml")


def test_recipe_file_must_be_named_after_its_target(tmp_path):
    path = tmp_path / "other.toml"
    path.write_text(BASE)
    with pytest.raises(RecipeError, match="must match the file name"):
        load_recipe(path)
    good = tmp_path / "t.toml"
    good.write_text(BASE)
    assert resolve_target(str(good)).name == "t"
    with pytest.raises(RecipeError, match="not found"):
        resolve_target(str(tmp_path / "missing.toml"))


def test_registry_refuses_duplicates_and_lists_names_for_unknown(monkeypatch):
    monkeypatch.setattr(targets_module, "_TARGETS", dict(targets_module._TARGETS))
    with pytest.raises(ValueError, match="already registered"):
        register_target(get_target("rpi5"))
    custom = dataclasses.replace(get_target("rpi5"), name="rpi5-lab")
    assert register_target(custom) is custom
    assert get_target("rpi5-lab") is custom
    with pytest.raises(ValueError, match="unknown target 'rpi3'.*cpu-x86, jetson-orin, rpi4"):
        get_target("rpi3")


def test_ort_max_opset_table_is_monotonic():
    assert ort_max_opset("1.14") == 18
    assert ort_max_opset("1.17.3") == 20
    assert ort_max_opset("1.23") >= ort_max_opset("1.18")
    assert ort_max_opset("1.10") == 0
