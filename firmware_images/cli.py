"""``fedfleet image`` (build, verify, inspect signed bundles) and ``fedfleet keys``.

Heavy imports (torch, onnx, onnxruntime) happen inside the commands, so ``fedfleet
--help`` stays fast. Every failure caused by the user's input exits non-zero with one
line on stderr that says what is wrong and how to fix it, and leaves no file behind.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fedfleet.cli_support import EXIT_BAD_INPUT, EXIT_FAILURE, FleetUrl, fail, sub_app

if TYPE_CHECKING:
    from rich.console import Console

    from firmware_images.manifest import Manifest

image_app = sub_app("image", "Build, verify, inspect and publish signed model bundles.")
keys_app = sub_app("keys", "Ed25519 signing keys for bundles.")


@keys_app.callback()
def _keys_group() -> None:
    """Ed25519 signing keys for bundles."""  # keeps `keys` a group with one command


def _registry_args(model: str, fleet_url: str | None) -> tuple[int, Any]:
    """``--model`` as a version number and the fleet connection; exit 2 if either is bad."""
    from fleet.client import (
        FleetError,
        connection_from_env,
        parse_model_version,
    )

    try:
        return parse_model_version(model), connection_from_env(fleet_url)
    except FleetError as err:
        fail(str(err))


@keys_app.command("generate")
def keys_generate(
    out: Annotated[
        Path,
        typer.Option(
            "--out", help="Prefix of the key files: writes PREFIX.key (mode 0600) and PREFIX.pub."
        ),
    ],
    force: Annotated[bool, typer.Option("--force", help="Replace existing key files.")] = False,
) -> None:
    """Create an Ed25519 key pair for signing bundles."""
    from firmware_images.errors import KeyFileError
    from firmware_images.keys import generate_keypair

    try:
        paths = generate_keypair(prefix=out, force=force)
    except KeyFileError as err:  # the files exist (no --force) or the folder is missing
        fail(str(err))
    except OSError as err:
        fail(str(err), EXIT_FAILURE)
    typer.echo(f"private key: {paths.private} (mode 0600; keep it on the build machine)")
    typer.echo(f"public key:  {paths.public} (give it to devices and to image verify)")
    typer.echo(f"key id:      {paths.key_id}")


@image_app.command("build")
def image_build(
    target: Annotated[
        str,
        typer.Option(
            "--target", help="Target name (cpu-x86, rpi4, rpi5, jetson-orin) or a recipe .toml."
        ),
    ],
    key: Annotated[
        Path, typer.Option("--key", help="Ed25519 private key (PREFIX.key) that signs.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Bundle file to write (e.g. model-rpi5.ffb).")],
    task: Annotated[
        str | None,
        typer.Option(
            "--task",
            help="Task the model was trained for (digits-cnn...); with --model, the "
            "registry's task is used and --task only double-checks it.",
            show_default=False,
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint", help="PyTorch state dict (torch.save(model.state_dict(), FILE))."
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="Model version number in the fleet's registry (instead of --checkpoint): "
            "its torch checkpoint is downloaded and hash-checked. Token from $FEDFLEET_TOKEN.",
            show_default=False,
        ),
    ] = None,
    upload: Annotated[
        bool,
        typer.Option(
            "--upload",
            help="With --model: store the signed bundle as that version's 'bundle' artifact "
            "for the target (what `fedfleet rollout create --model` deploys).",
        ),
    ] = False,
    fleet_url: FleetUrl = None,
    version: Annotated[
        str | None,
        typer.Option(
            "--version",
            help="Version label in the manifest (default: v<N> with --model N, else "
            "ckpt-<12 hex of the checkpoint's SHA-256>).",
        ),
    ] = None,
    data_seed: Annotated[
        int,
        typer.Option(
            "--data-seed", help="Seed of the task's dataset split (calibration and held-out)."
        ),
    ] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out file.")] = False,
    release: Annotated[
        int | None,
        typer.Option(
            "--release",
            min=1,
            max=2**53 - 1,
            help="Release number in the signed manifest; devices refuse a bundle whose "
            "release is not above the one they run (default: the UTC time in milliseconds).",
        ),
    ] = None,
) -> None:
    """Export, quantize, gate on accuracy, sign and write a bundle for one target."""
    if (checkpoint is None) == (model is None):
        fail("pass exactly one of --checkpoint FILE or --model VERSION")
    if upload and model is None:
        fail(
            "--upload stores the bundle under a registry version: use --model VERSION, or "
            "publish a --checkpoint build with `fedfleet image publish FILE --model VERSION`"
        )
    if checkpoint is not None and task is None:
        fail("--checkpoint needs --task (the task the weights were trained for)")

    from firmware_images.targets import RecipeError, resolve_target

    try:
        resolve_target(target)  # an unknown target fails before any download
    except (RecipeError, ValueError) as err:
        fail(str(err))
    if out.exists() and not force:  # before any download
        fail(f"{out} already exists; choose another --out or pass --force")

    if model is not None:
        _build_from_registry(
            model=model,
            fleet_url=fleet_url,
            task=task,
            target=target,
            key=key,
            out=out,
            version=version,
            data_seed=data_seed,
            force=force,
            upload=upload,
            release=release,
        )
        return
    if checkpoint is None or task is None:  # pragma: no cover - excluded above; narrows types
        raise typer.Exit(2)
    _build(
        target=target,
        task=task,
        checkpoint=checkpoint,
        key=key,
        out=out,
        version=version,
        model_version=None,
        data_seed=data_seed,
        force=force,
        release=release,
    )


def _build_from_registry(
    *,
    model: str,
    fleet_url: str | None,
    task: str | None,
    target: str,
    key: Path,
    out: Path,
    version: str | None,
    data_seed: int,
    force: bool,
    upload: bool,
    release: int | None = None,
) -> None:
    """``image build --model``: fetch the checkpoint, build, and (``--upload``) publish."""
    import tempfile

    from firmware_images.errors import KeyFileError
    from firmware_images.keys import load_private_key
    from firmware_images.registry import fetch_checkpoint
    from firmware_images.targets import resolve_target
    from fleet.client import FleetClient, FleetError

    number, connection = _registry_args(model, fleet_url)
    try:
        load_private_key(key)  # a bad key fails before the download
    except KeyFileError as err:
        fail(str(err))
    with (
        FleetClient(connection) as client,
        tempfile.TemporaryDirectory(prefix="fedfleet-model-") as scratch,
    ):
        try:
            fetched = fetch_checkpoint(client, number, dest_dir=Path(scratch), task=task)
        except FleetError as err:  # refused, unreachable, or a checkpoint that fails its hash
            fail(str(err), EXIT_FAILURE)
        recipe_name = resolve_target(target).name
        taken = [
            a for a in fetched.model.artifacts if a.format == "bundle" and a.target == recipe_name
        ]
        if upload and taken:  # refuse before spending a build on it
            fail(
                f"model version {number} already has a bundle for {recipe_name} (artifact "
                f"{taken[0].id}); an artifact is never replaced: register a new model version "
                "for a new build, or drop --upload",
                EXIT_FAILURE,
            )
        typer.echo(
            f"model version {number} ({fetched.model.task}, {fetched.model.stage}): checkpoint "
            f"artifact {fetched.artifact.id}, {fetched.artifact.size_bytes:,} bytes, sha256 "
            f"{fetched.artifact.sha256[:16]}… verified"
        )
        _build(
            target=target,
            task=fetched.model.task,
            checkpoint=fetched.path,
            key=key,
            out=out,
            version=version,
            model_version=str(number),
            data_seed=data_seed,
            force=force,
            release=release,
        )
        if upload:
            _publish(client, number, bundle=out, key=key, built_now=True)


def _publish(client: Any, number: int, *, bundle: Path, key: Path, built_now: bool) -> None:
    from firmware_images.errors import BundleError, KeyFileError
    from firmware_images.registry import publish_bundle
    from fleet.client import FleetError

    try:
        published = publish_bundle(client, number, bundle=bundle, key=key)
    except BundleError as err:
        fail(f"{bundle} does not verify with the public half of --key {key}: {err}", EXIT_FAILURE)
    except (FleetError, KeyFileError) as err:
        code = EXIT_BAD_INPUT if isinstance(err, KeyFileError) else EXIT_FAILURE
        if built_now:
            fail(
                f"{err} (the bundle {bundle} was written; once fixed, store it with "
                f"`fedfleet image publish {bundle} --model {number} --key {key}`)",
                code,
            )
        fail(str(err), code)
    a = published.artifact
    typer.echo(
        f"stored as artifact {a.id} of model version {number}: bundle for {a.target}, "
        f"{a.size_bytes:,} bytes, sha256 {a.sha256[:16]}…, signature "
        f"{'recorded' if a.signature else 'none'}; deploy it with `fedfleet rollout create "
        f"--model {number} --group GROUP`"
    )


def _build(
    *,
    target: str,
    task: str,
    checkpoint: Path,
    key: Path,
    out: Path,
    version: str | None,
    model_version: str | None,
    data_seed: int,
    force: bool,
    release: int | None = None,
) -> None:
    """Export, quantize, gate, sign and write; one line on stderr and exit 1 on failure."""
    from firmware_images.errors import BundleError, KeyFileError
    from firmware_images.targets import RecipeError, resolve_target

    try:
        recipe = resolve_target(target)
    except (RecipeError, ValueError) as err:
        fail(str(err))

    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from firmware_images.build import BuildError, BuildRequest, build_bundle
    from firmware_images.export import CheckpointError, ExportError
    from firmware_images.gate import GateRefusedError, format_report

    request = BuildRequest(
        recipe=recipe,
        task=task,
        checkpoint=checkpoint,
        key=key,
        out=out,
        version=version,
        model_version=model_version,
        data_seed=data_seed,
        force=force,
        release=release,
    )
    steps = {"none": 4, "fp16-cast": 5}.get(recipe.quantization.method, 6)  # int8: + timing
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        transient=True,
        console=_stderr_console(),
    )
    try:
        with progress:
            bar = progress.add_task(f"building for {recipe.name}", total=steps)

            seen: list[str] = []

            def on_step(name: str) -> None:
                progress.update(bar, description=f"{recipe.name}: {name}", completed=len(seen))
                seen.append(name)

            result = build_bundle(request, on_step=on_step)
            progress.update(bar, completed=steps)
    except GateRefusedError as err:
        typer.echo(format_report(err.report))
        fail(str(err), EXIT_FAILURE)
    except (ExportError, BundleError) as err:  # the export or the signing failed
        fail(str(err), EXIT_FAILURE)
    except (BuildError, CheckpointError, KeyFileError, ValueError) as err:  # fix the input
        fail(str(err))
    m = result.manifest
    typer.echo(format_report(result.gate))
    if result.note:
        typer.echo(result.note)
    typer.echo(
        f"wrote {result.path} ({result.size:,} bytes): {m.task} {m.precision} {m.format} for "
        f"{m.target}, version {m.version}, model sha256 {m.model.sha256[:16]}…, "
        f"signed by {m.key_id}"
    )


@image_app.command("publish")
def image_publish(
    bundle: Annotated[Path, typer.Argument(help="Signed bundle file to store.")],
    model: Annotated[str, typer.Option("--model", help="Model version number to store it under.")],
    key: Annotated[
        Path,
        typer.Option(
            "--key",
            help="The Ed25519 private key that signed the bundle: it is verified with its "
            "public half and the key signs the file's SHA-256 for the registry.",
        ),
    ],
    fleet_url: FleetUrl = None,
) -> None:
    """Store a signed bundle as a model version's 'bundle' artifact for its target."""
    from fleet.client import FleetClient

    number, connection = _registry_args(model, fleet_url)
    with FleetClient(connection) as client:
        _publish(client, number, bundle=bundle, key=key, built_now=False)


@image_app.command("verify")
def image_verify(
    bundle: Annotated[Path, typer.Argument(help="Bundle file to verify.")],
    pubkey: Annotated[
        Path, typer.Option("--pubkey", help="Trusted Ed25519 public key (PREFIX.pub).")
    ],
    target: Annotated[
        str | None,
        typer.Option("--target", help="Refuse a bundle built for another target than this one."),
    ] = None,
    run_self_test: Annotated[
        bool,
        typer.Option(
            "--self-test", help="Also load the model with its runtime and run the reference."
        ),
    ] = False,
) -> None:
    """Check a bundle's signature, model hash and target (and optionally run its self-test)."""
    from firmware_images.bundle import verify_bundle
    from firmware_images.errors import BundleError, KeyFileError
    from firmware_images.keys import load_public_key
    from firmware_images.targets import available_targets, get_target

    try:
        public_key = load_public_key(pubkey)
        limit = None
        if target is not None and target in available_targets():
            limit = get_target(target).model.max_bytes
        verified = verify_bundle(
            bundle, public_key=public_key, target=target, max_model_bytes=limit
        )
    except KeyFileError as err:
        fail(f"{bundle}: {err}")
    except BundleError as err:  # the bundle does not verify: the check failed
        fail(f"{bundle}: {err}", EXIT_FAILURE)
    m = verified.manifest
    typer.echo(
        f"OK {bundle}: {m.task} {m.precision} {m.format} for {m.target}, version {m.version}, "
        f"model {m.model.size:,} bytes sha256 {m.model.sha256[:16]}…, signed by {verified.key_id}"
    )
    if run_self_test:
        from firmware_images.runtime import runner_for, self_test

        try:
            result = self_test(m, runner_for(m, verified.model))
        except BundleError as err:
            fail(f"{bundle}: {err}", EXIT_FAILURE)
        typer.echo(
            f"self-test passed on {result.runner}: max |difference| {result.max_abs_diff:.3g} "
            f"(allowed {result.atol:.3g})"
        )


@image_app.command("inspect")
def image_inspect(
    bundle: Annotated[Path, typer.Argument(help="Bundle file to inspect.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the whole manifest as JSON.")
    ] = False,
) -> None:
    """Show a bundle's manifest. Does NOT check the signature: use `image verify` for that."""
    from firmware_images.bundle import inspect_bundle
    from firmware_images.errors import BundleError

    try:
        m = inspect_bundle(bundle)
    except BundleError as err:
        fail(f"{bundle}: {err}")
    if as_json:
        typer.echo(json.dumps(asdict(m), indent=2))
        return
    acc = m.accuracy
    providers = ", ".join(m.runtime.providers) or "-"
    rows = [
        ("target", f"{m.target} ({m.arch})"),
        ("task / version", f"{m.task} / {m.version}"),
        ("model", f"{m.model.file}, {m.model.size:,} bytes, sha256 {m.model.sha256}"),
        (
            "format",
            f"{m.format} {m.precision} ({m.quantization})"
            + (f", opset {m.opset}" if m.opset else ""),
        ),
        ("runtime", f"{m.runtime.name} >= {m.runtime.min_version} [{providers}]"),
        ("inputs", "; ".join(f"{t.name} {list(t.shape)} {t.dtype}" for t in m.inputs)),
        ("outputs", "; ".join(f"{t.name} {list(t.shape)} {t.dtype}" for t in m.outputs)),
        (
            "accuracy",
            f"{100 * acc.exported:.2f}% vs PyTorch {100 * acc.reference:.2f}% "
            f"({acc.drop_points:+.2f} points, allowed {acc.max_drop_points:.2f}) on {acc.heldout}",
        ),
        ("gate runtime", acc.runtime),
        *_latency_row(m),
        ("created", f"{m.created} by {m.builder}"),
        ("signed by", f"{m.key_id} (signature not checked here: use fedfleet image verify)"),
    ]
    width = max(len(k) for k, _ in rows)
    for key_name, value in rows:
        typer.echo(f"{key_name.ljust(width)}  {value}")


def _latency_row(m: Manifest) -> list[tuple[str, str]]:
    lat = m.latency
    if lat is None:
        return []
    return [
        (
            "latency p50",
            f"fp32 {lat.fp32_p50_us:.1f} us, int8 {lat.int8_p50_us:.1f} us ({lat.decision}; "
            f"{lat.runs} runs, batch {lat.batch}, {lat.threads} thread, {lat.runtime}, "
            f"{lat.machine})",
        )
    ]


def _stderr_console() -> Console:
    from rich.console import Console

    return Console(file=sys.stderr)
