"""`fedfleet keys` and `fedfleet image`: the real command, and every bad input."""

from __future__ import annotations

import json
import re
import stat

import pytest
from firmware_images_testkit import run_fedfleet
from typer.testing import CliRunner

from firmware_images import build as build_module
from firmware_images.cli import image_app, keys_app

pytestmark = pytest.mark.slow
runner = CliRunner()


def _one_clean_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and "Traceback" not in stderr
    return lines[0]


def test_keys_generate_writes_a_0600_key_and_refuses_to_overwrite(tmp_path):
    first = run_fedfleet("keys", "generate", "--out", "ops", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "ed25519:" in first.stdout
    assert stat.S_IMODE((tmp_path / "ops.key").stat().st_mode) == 0o600
    assert (tmp_path / "ops.pub").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    before = (tmp_path / "ops.key").read_bytes()
    again = runner.invoke(keys_app, ["generate", "--out", str(tmp_path / "ops")])
    assert again.exit_code == 2  # bad input: --force or another --out fixes it
    assert "already exists" in _one_clean_error_line(again.stderr)
    assert (tmp_path / "ops.key").read_bytes() == before


def test_built_bundle_verifies_self_tests_and_inspects(cpu_bundle, signing_key, workdir):
    ok = run_fedfleet(
        "image", "verify", str(cpu_bundle), "--pubkey", str(signing_key.public),
        "--target", "cpu-x86", "--self-test", cwd=workdir,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(f"OK {cpu_bundle}")
    assert "self-test passed" in ok.stdout
    shown = runner.invoke(image_app, ["inspect", str(cpu_bundle)])
    assert shown.exit_code == 0
    assert "cpu-x86" in shown.stdout and "signature not checked" in shown.stdout
    assert "latency p50" in shown.stdout and "fp32" in shown.stdout
    as_json = json.loads(runner.invoke(image_app, ["inspect", str(cpu_bundle), "--json"]).stdout)
    assert as_json["precision"] == "int8" and as_json["model"]["file"] == "model.onnx"
    assert as_json["latency"]["decision"] in ("int8-faster", "insisted", "other-arch")


def test_verify_refuses_tampering_another_key_and_another_target(
    cpu_bundle, signing_key, workdir, tmp_path
):
    data = bytearray(cpu_bundle.read_bytes())
    data[-3000] ^= 0xFF  # inside the model
    tampered = tmp_path / "tampered.ffb"
    tampered.write_bytes(bytes(data))
    listing = sorted(p.name for p in tmp_path.iterdir())
    bad = run_fedfleet("image", "verify", str(tampered), "--pubkey", str(signing_key.public),
                       cwd=tmp_path)  # fmt: skip
    assert bad.returncode == 1
    assert "modified or corrupted" in _one_clean_error_line(bad.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == listing  # nothing written

    other = runner.invoke(image_app, ["verify", str(cpu_bundle), "--pubkey", _other_pub(tmp_path)])
    assert other.exit_code == 1
    assert "signed by key" in _one_clean_error_line(other.stderr)

    target = runner.invoke(
        image_app,
        ["verify", str(cpu_bundle), "--pubkey", str(signing_key.public), "--target", "rpi4"],
    )
    assert target.exit_code == 1
    assert "is for target 'cpu-x86', this device is 'rpi4'" in _one_clean_error_line(target.stderr)

    truncated = tmp_path / "cut.ffb"
    truncated.write_bytes(cpu_bundle.read_bytes()[:1000])
    cut = runner.invoke(image_app, ["verify", str(truncated), "--pubkey", str(signing_key.public)])
    assert cut.exit_code == 1 and "truncated" in _one_clean_error_line(cut.stderr)


def test_fp16_bundle_for_jetson_builds_through_the_cli(tmp_path, digits_checkpoint, signing_key):
    out = tmp_path / "jetson.ffb"
    built = runner.invoke(
        image_app,
        ["build", "--target", "jetson-orin", "--task", "digits-cnn", "--checkpoint",
         str(digits_checkpoint), "--key", str(signing_key.private), "--out", str(out),
         "--version", "7"],
    )  # fmt: skip
    assert built.exit_code == 0, built.stderr
    assert "PASS" in built.stdout and "fp16 onnx for jetson-orin, version 7" in built.stdout
    checked = runner.invoke(
        image_app, ["verify", str(out), "--pubkey", str(signing_key.public), "--self-test"]
    )
    assert checked.exit_code == 0, checked.stderr
    assert "self-test passed" in checked.stdout


def test_gate_refusal_prints_the_report_and_writes_nothing(
    tmp_path, digits_checkpoint, signing_key, monkeypatch, insisting_cpu_recipe
):
    real = build_module.calibration_set
    monkeypatch.setattr(
        build_module, "calibration_set", lambda data, **kw: real(data, **kw) * 0.01
    )  # a broken calibration set: activations saturate on real inputs
    out = tmp_path / "bad.ffb"
    # The recipe keeps int8 even if slower: else a slow broken int8 falls back to fp32.
    args = _build_args(digits_checkpoint, signing_key, out, str(insisting_cpu_recipe))
    result = runner.invoke(image_app, args)
    assert result.exit_code == 1
    assert "REFUSED" in result.stdout and "PyTorch accuracy" in result.stdout
    assert "accuracy gate refused" in _one_clean_error_line(result.stderr)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("edit", "code", "message"),
    [
        (lambda a, t: [*a, "--model", "7"], 2, "exactly one of --checkpoint"),
        (lambda a, t: _drop(a, "--checkpoint"), 2, "exactly one of --checkpoint"),
        (lambda a, t: _swap(a, "--checkpoint", str(t / "nope.pt")), 2, "not found"),
        (lambda a, t: _swap(a, "--target", "rpi3"), 2, "unknown target 'rpi3'"),
        (lambda a, t: _swap(a, "--target", str(t / "x.toml")), 2, "recipe file .* not found"),
        (lambda a, t: _swap(a, "--task", "breast-cancer-mlp"), 2, "does not fit task"),
        (lambda a, t: _swap(a, "--task", "mnist"), 2, "unknown task 'mnist'"),
        (lambda a, t: _swap(a, "--key", str(t / "nope.key")), 2, "not found"),
        (lambda a, t: _swap(a, "--out", str(t / "no" / "b.ffb")), 2, "does not exist"),
    ],
)
def test_bad_build_inputs_fail_with_one_clear_line(
    tmp_path, digits_checkpoint, signing_key, edit, code, message
):
    args = edit(_build_args(digits_checkpoint, signing_key, tmp_path / "b.ffb", "rpi5"), tmp_path)
    result = runner.invoke(image_app, args)
    assert result.exit_code == code
    assert re.search(message, _one_clean_error_line(result.stderr))
    assert not (tmp_path / "b.ffb").exists()


def test_model_option_needs_a_token_from_the_environment(tmp_path, signing_key, monkeypatch):
    monkeypatch.delenv("FEDFLEET_TOKEN", raising=False)
    result = runner.invoke(
        image_app,
        ["build", "--target", "rpi5", "--model", "7", "--key",
         str(signing_key.private), "--out", str(tmp_path / "b.ffb")],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "$FEDFLEET_TOKEN is not set" in _one_clean_error_line(result.stderr)
    assert list(tmp_path.iterdir()) == []


def test_verify_and_inspect_bad_files(tmp_path, signing_key):
    junk = tmp_path / "junk.ffb"
    junk.write_text("hello")
    for args, code in (
        (["inspect", str(junk)], 2),  # the file named is not a bundle: bad input
        (["verify", str(junk), "--pubkey", str(signing_key.public)], 1),  # the check failed
    ):
        result = runner.invoke(image_app, args)
        assert result.exit_code == code
        assert "not a fedfleet bundle" in _one_clean_error_line(result.stderr)
    missing_key = runner.invoke(image_app, ["verify", str(junk), "--pubkey", str(tmp_path / "k")])
    assert missing_key.exit_code == 2
    assert "not found" in _one_clean_error_line(missing_key.stderr)


def _build_args(checkpoint, key, out, target) -> list[str]:
    return ["build", "--target", target, "--task", "digits-cnn", "--checkpoint", str(checkpoint),
            "--key", str(key.private), "--out", str(out)]  # fmt: skip


def _swap(args: list[str], option: str, value: str) -> list[str]:
    i = args.index(option)
    return [*args[: i + 1], value, *args[i + 2 :]]


def _drop(args: list[str], option: str) -> list[str]:
    i = args.index(option)
    return [*args[:i], *args[i + 2 :]]


def _other_pub(folder) -> str:
    from firmware_images.keys import generate_keypair

    return str(generate_keypair(prefix=folder / "other").public)
