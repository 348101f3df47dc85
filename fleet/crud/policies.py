"""Promotion policies: apply (a new version, checked against the fleet), read, approve.

What a policy file can get wrong by itself is checked by :func:`fleet.policy.parse_policy`;
here the fleet checks what only it knows, each refusal an :class:`InvalidInput` (422)
with one line: the group exists; every target is a registered build recipe
(``firmware_images/targets``) **and** at least one active device of the group has it (a
bundle for a target nobody in the group runs would never be installed; a target the group
runs but the policy omits is allowed: those devices keep their model); a signing key is an
Ed25519 private key file the fleet's process can read, mode 0600 (the check the bundle
builder makes). Nothing else of the key is stored: the policy keeps only its path.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func
from sqlmodel import Session, col, select

from fleet import audit
from fleet.audit import Actor
from fleet.crud.groups import group_by_name
from fleet.errors import Conflict, InvalidInput, InvalidReference
from fleet.models.common import utcnow
from fleet.models.devices import Device, Group
from fleet.models.policies import (
    PolicyPublic,
    Promotion,
    PromotionPolicy,
    PromotionPublic,
    PromotionState,
)
from fleet.policy import Policy, PolicyError, parse_policy, policy_from_document


def check_key_folder(key: str, key_dir: Path | None) -> None:
    """:class:`InvalidInput` unless ``key`` lies in the fleet's signing-key folder."""
    if key_dir is None:
        raise InvalidInput(
            f"this fleet holds no signing keys (FEDFLEET_FLEET_SIGNING_KEY_DIR is unset), so it "
            f'cannot sign with {key}; set that folder, or use approval = "operator" in [signing]'
        )
    folder = key_dir.resolve()
    resolved = Path(key).resolve()
    if not resolved.is_relative_to(folder) or resolved == folder:
        raise InvalidInput(
            f"signing key {key} is outside the fleet's signing-key folder {key_dir}; move the "
            "key there and give that path"
        )


def check_against_fleet(session: Session, policy: Policy, *, key_dir: Path | None = None) -> Group:
    """The policy's group; :class:`InvalidInput` when the fleet cannot carry it out.

    A signing key must lie in ``key_dir`` (the fleet's ``signing_key_dir`` setting, links
    resolved) before the fleet even tries to read it."""
    from firmware_images.errors import KeyFileError
    from firmware_images.keys import load_private_key
    from firmware_images.targets import available_targets

    group = group_by_name(session, policy.group)
    if group is None:
        raise InvalidReference(
            f"group '{policy.group}' does not exist; create it first (POST /api/v1/groups) "
            "or fix group = in the policy"
        )
    known = available_targets()
    present = set(
        session.exec(
            select(Device.hardware_target).where(
                col(Device.group_id) == group.id, col(Device.retired_at).is_(None)
            )
        ).all()
    )
    for target in policy.targets:
        if target not in known:
            raise InvalidInput(
                f"unknown target '{target}': not a build recipe; use one of {', '.join(known)}"
            )
        if target not in present:
            has = ", ".join(sorted(present)) or "none (the group has no active devices)"
            raise InvalidInput(
                f"target '{target}' is not present in group '{policy.group}': no active device "
                f"of the group runs it; the group's targets are {has}"
            )
    if policy.signing.key is not None:
        check_key_folder(policy.signing.key, key_dir)
        try:
            load_private_key(Path(policy.signing.key))
        except (KeyFileError, OSError) as err:
            raise InvalidInput(
                f"the fleet cannot use signing key {policy.signing.key}: {err}"
            ) from None
    return group


def apply_policy(
    session: Session, source: str, *, actor: Actor, key_dir: Path | None = None
) -> PromotionPolicy:
    """Check ``source`` (a policy file's text) and store it as its group's next version."""
    try:
        policy = parse_policy(source, source="policy")
    except PolicyError as err:
        raise InvalidInput(str(err)) from None
    group = check_against_fleet(session, policy, key_dir=key_dir)
    newest = _newest_version(session, group.id or 0)
    row = PromotionPolicy(
        group_id=group.id or 0,
        version=newest + 1,
        document=policy.to_document(),
        source=source,
        created_by=actor.name,
    )
    session.add(row)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="policy.apply",
        entity_type="policy",
        entity_id=f"{group.name}@{row.version}",
        before=None if newest == 0 else {"version": newest},
        after={"group": group.name, "version": row.version, "document": row.document},
    )
    return row


def _newest_version(session: Session, group_id: int) -> int:
    statement = select(func.max(PromotionPolicy.version)).where(
        col(PromotionPolicy.group_id) == group_id
    )
    return session.exec(statement).one() or 0


def policy_public(row: PromotionPolicy, *, group: str, current: bool) -> PolicyPublic:
    return PolicyPublic(
        id=row.id or 0,
        group=group,
        version=row.version,
        current=current,
        signing="key" if "key" in row.document.get("signing", {}) else "approval",
        document=row.document,
        source=row.source,
        created_at=row.created_at,
        created_by=row.created_by,
    )


def current_policies(session: Session) -> list[PolicyPublic]:
    """Every group's newest policy version, by group name."""
    newest = (
        select(PromotionPolicy.group_id, func.max(PromotionPolicy.version).label("v"))
        .group_by(col(PromotionPolicy.group_id))
        .subquery()
    )
    rows = session.exec(
        select(PromotionPolicy, Group.name)
        .join(
            newest,
            (col(PromotionPolicy.group_id) == newest.c.group_id)
            & (col(PromotionPolicy.version) == newest.c.v),
        )
        .join(Group, col(Group.id) == col(PromotionPolicy.group_id))
        .order_by(col(Group.name))
    ).all()
    return [policy_public(row, group=name, current=True) for row, name in rows]


def history(session: Session, group: Group) -> list[PolicyPublic]:
    """Every version of ``group``'s policy, newest first (empty: it has none)."""
    rows = session.exec(
        select(PromotionPolicy)
        .where(col(PromotionPolicy.group_id) == group.id)
        .order_by(col(PromotionPolicy.version).desc())
    ).all()
    return [policy_public(r, group=group.name, current=i == 0) for i, r in enumerate(rows)]


def policy_version(session: Session, group: Group, version: int | None) -> PolicyPublic | None:
    """Version ``version`` of ``group``'s policy (None: the current one), or None."""
    versions = history(session, group)
    if version is None:
        return versions[0] if versions else None
    return next((v for v in versions if v.version == version), None)


def current_policy(session: Session, group: str) -> Policy | None:
    """``group``'s current policy as a :class:`Policy` (None: no such group or no policy);
    what the promotion controller reads."""
    found = group_by_name(session, group)
    if found is None:
        return None
    current = policy_version(session, found, None)
    return None if current is None else policy_from_document(current.document)


# --- promotions -----------------------------------------------------------------------


def create_promotion(
    session: Session, *, group: Group, model_version_id: int, actor: Actor, reason: str = ""
) -> Promotion:
    """A promotion of ``model_version_id`` to ``group`` under its current policy, waiting
    for an operator's approval (the controller's entry point for offline signing)."""
    current = policy_version(session, group, None)
    if current is None:
        raise InvalidReference(f"group '{group.name}' has no policy; `fedfleet policy apply`")
    promotion = Promotion(
        group_id=group.id or 0,
        policy_id=current.id,
        model_version_id=model_version_id,
        reason=reason,
    )
    session.add(promotion)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="promotion.create",
        entity_type="promotion",
        entity_id=promotion.id or 0,
        after=promotion_public(session, promotion),
    )
    return promotion


def promotion_public(session: Session, promotion: Promotion) -> PromotionPublic:
    group = session.get(Group, promotion.group_id)
    policy = session.get(PromotionPolicy, promotion.policy_id)
    return PromotionPublic(
        id=promotion.id or 0,
        group=group.name if group else "",
        policy_version=policy.version if policy else 0,
        model_version_id=promotion.model_version_id,
        state=promotion.state,
        reason=promotion.reason,
        created_at=promotion.created_at,
        decided_at=promotion.decided_at,
        decided_by=promotion.decided_by,
    )


def list_promotions(session: Session, *, limit: int = 100) -> list[PromotionPublic]:
    """The newest promotions, newest first."""
    rows = session.exec(select(Promotion).order_by(col(Promotion.id).desc()).limit(limit)).all()
    return [promotion_public(session, p) for p in rows]


def approve_promotion(session: Session, promotion: Promotion, *, actor: Actor) -> Promotion:
    """Record an operator's approval; Conflict unless it is waiting for one and the
    version holds a bundle for every target of the policy (the operator signed them
    offline and uploaded them: ``fedfleet policy approve ID --key PATH`` does both)."""
    if promotion.state is not PromotionState.pending_approval:
        raise Conflict(
            f"promotion {promotion.id} is {promotion.state.value}, not pending_approval; "
            "only a pending promotion can be approved"
        )
    _require_bundles(session, promotion)
    before = promotion_public(session, promotion)
    promotion.state = PromotionState.approved
    promotion.decided_at = utcnow()
    promotion.decided_by = actor.name
    session.add(promotion)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="promotion.approve",
        entity_type="promotion",
        entity_id=promotion.id or 0,
        before=before,
        after=promotion_public(session, promotion),
    )
    return promotion


def _require_bundles(session: Session, promotion: Promotion) -> None:
    from fleet.models.registry import Artifact, ArtifactFormat

    policy = session.get(PromotionPolicy, promotion.policy_id)
    targets = policy_from_document(policy.document).targets if policy is not None else ()
    held = set(
        session.exec(
            select(Artifact.target).where(
                col(Artifact.model_version_id) == promotion.model_version_id,
                col(Artifact.format) == ArtifactFormat.bundle,
            )
        ).all()
    )
    missing = [t for t in targets if t not in held]
    if missing:
        raise Conflict(
            f"model version {promotion.model_version_id} has no signed bundle for "
            f"{', '.join(missing)}; build, sign and upload them with `fedfleet policy approve "
            f"{promotion.id} --key PATH` (your offline key), which then approves"
        )
