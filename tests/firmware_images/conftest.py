"""Fixtures for the firmware_images tests.

The suite runs in pytest's importlib mode (no ``tests/__init__.py``), so shared helpers
live in ``firmware_images_testkit.py``, made importable by the line below.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from firmware_images_testkit import require_tflite, run_fedfleet

TRAIN_EPOCHS = 5


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One intra-op thread: on a shared 2-core machine, OpenMP spinning made training 10x
    slower (measured 184 s against 20 s for the same 5 epochs under load)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("firmware")


@pytest.fixture(scope="session")
def digits_checkpoint(workdir: Path) -> Path:
    """A digits-cnn state dict trained centrally for a few epochs (about 1 s)."""
    import torch

    from tasks import get_task, train_local

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    task = get_task("digits-cnn")
    data = task.load_data(0)
    model = task.build_model()
    train_local(
        model,
        data.x_train,
        data.y_train,
        epochs=TRAIN_EPOCHS,
        batch_size=16,
        learning_rate=0.05,
        seed=0,
    )
    torch.set_num_threads(before)
    path = workdir / "digits.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def signing_key(workdir: Path):
    from firmware_images.keys import generate_keypair

    return generate_keypair(prefix=workdir / "signer")


@pytest.fixture(scope="session")
def insisting_cpu_recipe(workdir: Path) -> Path:
    """cpu-x86's recipe with ``keep_int8_if_slower = true``: int8 whatever the timing
    (on this machine int8 is measured slower for digits-cnn, so cpu-x86 ships fp32)."""
    from firmware_images.targets import builtin_recipe_files

    source = next(p for p in builtin_recipe_files() if p.stem == "cpu-x86").read_text()
    text = source.replace("[quantization]\n", "[quantization]\nkeep_int8_if_slower = true\n", 1)
    assert text != source
    folder = workdir / "recipes"
    folder.mkdir(exist_ok=True)
    path = folder / "cpu-x86.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def cpu_bundle(workdir: Path, digits_checkpoint: Path, signing_key, insisting_cpu_recipe) -> Path:
    """An int8 ONNX bundle for cpu-x86, built by the real ``fedfleet image build`` from
    cpu-x86's recipe set to keep int8 even if slower."""
    out = workdir / "digits-cpu-x86.ffb"
    result = run_fedfleet(
        "image",
        "build",
        "--target",
        str(insisting_cpu_recipe),
        "--task",
        "digits-cnn",
        "--checkpoint",
        str(digits_checkpoint),
        "--key",
        str(signing_key.private),
        "--out",
        str(out),
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and "PASS" in result.stdout
    assert "precision: int8" in result.stdout  # the one line about the timed choice
    return out


@pytest.fixture(scope="session")
def rpi4_build(workdir: Path, digits_checkpoint: Path, signing_key):
    """An int8 TFLite bundle for rpi4 (litert-torch + LiteRT quantizer + ai-edge-litert)."""
    require_tflite()
    from firmware_images.build import BuildRequest, build_bundle
    from firmware_images.targets import get_target

    return build_bundle(
        BuildRequest(
            recipe=get_target("rpi4"),
            task="digits-cnn",
            checkpoint=digits_checkpoint,
            key=signing_key.private,
            out=workdir / "digits-rpi4.ffb",
        )
    )
