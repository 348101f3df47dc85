"""``fedfleet policy apply|list|show|approve|timeline``: promotion policies over the fleet API.

Operator commands: they reach the fleet only through its API (``--fleet-url`` /
``$FEDFLEET_URL``, token in ``$FEDFLEET_TOKEN``; applying and approving need an admin
token). ``apply`` checks the file here first (its format, :mod:`fleet.policy`), then the
fleet checks what only it knows (the group, its targets, the signing key); either refusal
is one line on stderr and exit 2. ``docs/policies.md`` is the format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from fedfleet.cli_support import EXIT_BAD_INPUT, EXIT_FAILURE, FleetUrl, fail, sub_app

policy_app = sub_app(help="Promotion policies: apply, list, show, approve, timeline.")


def _over_api(fleet_url: str | None, call: Any) -> Any:
    """``call(client)``; the fleet's refusal of the input exits 2, other failures 1."""
    from fleet.client import FleetClient, FleetError, FleetInputError, connection_from_env

    try:
        with FleetClient(connection_from_env(fleet_url)) as client:
            return call(client)
    except FleetInputError as err:
        fail(f"the fleet refused the policy: {err}", EXIT_BAD_INPUT)
    except FleetError as err:
        fail(str(err), EXIT_FAILURE)


def _read_policy(path: Path) -> str:
    from fleet.policy import MAX_POLICY_BYTES, PolicyError, parse_policy

    try:
        if path.stat().st_size > MAX_POLICY_BYTES:
            fail(f"{path} is larger than {MAX_POLICY_BYTES} bytes; is it a policy file?")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        fail(f"policy file {path} not found; check the path")
    except (OSError, UnicodeDecodeError) as err:
        fail(f"cannot read policy file {path}: {err}")
    try:
        parse_policy(text, source=str(path))
    except PolicyError as err:
        fail(str(err))
    return text


@policy_app.command("apply")
def policy_apply(
    file: Annotated[Path, typer.Argument(help="Policy TOML file (docs/policies.md).")],
    fleet_url: FleetUrl = None,
) -> None:
    """Store FILE as its group's next policy version (admin token)."""
    text = _read_policy(file)
    info = _over_api(fleet_url, lambda c: c.apply_policy(text))
    typer.echo(
        f"policy of group '{info.group}' is now version {info.version} "
        f"(signing: {info.signing}; by {info.created_by})"
    )


@policy_app.command("list")
def policy_list(fleet_url: FleetUrl = None) -> None:
    """Every group's current policy version."""
    for info in _over_api(fleet_url, lambda c: c.list_policies()):
        typer.echo(
            f"{info.group}\tversion {info.version}\tsigning {info.signing}\t"
            f"{info.created_at}\t{info.created_by}"
        )


@policy_app.command("show")
def policy_show(
    group: Annotated[str, typer.Argument(help="Group name.")],
    version: Annotated[
        int | None,
        typer.Option("--version", min=1, help="A past version (default: the current one)."),
    ] = None,
    fleet_url: FleetUrl = None,
) -> None:
    """A group's policy (current, or --version N) as applied: a header line, then the TOML."""
    from fleet.client import FleetNotFoundError

    def call(client: Any) -> Any:
        try:
            return client.get_policy(group, version=version)
        except FleetNotFoundError as err:
            fail(str(err))

    info = _over_api(fleet_url, call)
    state = "current" if info.current else "superseded"
    typer.echo(
        f"# group '{info.group}', version {info.version} ({state}), applied "
        f"{info.created_at} by {info.created_by}"
    )
    typer.echo(info.source.rstrip("\n"))


@policy_app.command("approve")
def policy_approve(
    promotion: Annotated[
        int, typer.Argument(min=1, help="Promotion id (GET /api/v1/promotions lists them).")
    ],
    key: Annotated[
        Path | None,
        typer.Option(
            "--key",
            help="Your offline Ed25519 private key: build the policy's bundles here, sign "
            "them with it and upload them before approving (a target already holding a "
            "bundle is skipped).",
        ),
    ] = None,
    fleet_url: FleetUrl = None,
) -> None:
    """Approve a promotion waiting for an operator (policies with approval = "operator")."""
    from fleet.client import FleetNotFoundError

    if key is not None:
        _check_key(key)

    def call(client: Any) -> Any:
        try:
            pending = client.get_promotion(promotion)
        except FleetNotFoundError as err:
            fail(str(err))
        if pending.state != "pending_approval":
            fail(
                f"promotion {promotion} is {pending.state}, not pending_approval; only a "
                "pending promotion can be approved",
                EXIT_FAILURE,
            )
        if key is not None:
            _sign_offline(client, pending, key)
        return client.approve_promotion(promotion)

    info = _over_api(fleet_url, call)
    typer.echo(
        f"promotion {info.id} of model {info.model_version_id} to group '{info.group}' "
        f"(policy version {info.policy_version}): {info.state} by {info.decided_by}"
    )


def _check_key(key: Path) -> None:
    from firmware_images.errors import KeyFileError
    from firmware_images.keys import load_private_key

    try:
        load_private_key(key)
    except (KeyFileError, OSError) as err:
        fail(f"--key {key}: {err}")


def _sign_offline(client: Any, pending: Any, key: Path) -> None:
    """Build each of the policy's bundles from the version's checkpoint, sign with
    ``key``, upload (what ``fedfleet image build --model V --upload`` does per target)."""
    import tempfile

    from firmware_images.registry import fetch_checkpoint, publish_bundle
    from fleet.policy import parse_policy
    from fleet.promotion import build_bundle_file

    source = client.get_policy(pending.group, version=pending.policy_version).source
    policy = parse_policy(source)
    number = pending.model_version_id
    with tempfile.TemporaryDirectory(prefix="fedfleet-approve-") as scratch:
        fetched = fetch_checkpoint(client, number, dest_dir=Path(scratch))
        held = {a.target for a in fetched.model.artifacts if a.format == "bundle"}
        for target in policy.targets:
            if target in held:
                typer.echo(f"{target}: model version {number} already holds a bundle; skipped")
                continue
            out = Path(scratch) / f"{target}.bundle"
            try:
                build_bundle_file(
                    task=fetched.model.task,
                    checkpoint=fetched.path,
                    target=target,
                    key=key,
                    out=out,
                    model_version=number,
                    max_drop_points=policy.gates.max_bundle_accuracy_drop_points,
                    data_seed=0,
                )
            except Exception as err:  # the build's own one-line reasons (gate, export)
                fail(f"building the {target} bundle failed: {err}", EXIT_FAILURE)
            artifact = publish_bundle(client, number, bundle=out, key=key).artifact
            typer.echo(f"{target}: built, signed with {key} and stored as artifact {artifact.id}")


@policy_app.command("timeline")
def policy_timeline(
    group: Annotated[str, typer.Argument(help="Group name.")],
    model: Annotated[
        int | None, typer.Option("--model", min=1, help="Only this model version's chain.")
    ] = None,
    fleet_url: FleetUrl = None,
) -> None:
    """The group's chain, oldest first: run, version, gates, bundles, promotion, rollout
    waves, drift, retraining run; each automatic decision with who, when and why."""
    from fleet.client import FleetNotFoundError

    def call(client: Any) -> Any:
        try:
            return client.timeline(group, model_version=model)
        except FleetNotFoundError as err:
            fail(str(err))

    items = _over_api(fleet_url, call)
    if not items:
        typer.echo(f"nothing on the timeline of group '{group}' yet")
    for item in items:
        reason = f" -- {item.reason}" if item.reason else ""
        typer.echo(f"{item.at}  {item.actor}  {item.summary}{reason}")
