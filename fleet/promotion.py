"""The promotion controller: a registered model version goes through its group's policy.

``fleet serve`` runs :meth:`PromotionController.step` every ``promotion_interval_s``
seconds (a thread, :func:`start_promotions`). Each step reads the database only, so a
restart resumes where the previous process stopped; every state change is its own
transaction and an audit event (actor ``system:promotions``) with its reason:

1. **enqueue**: a model version registered from a run (``source_run_id``) after its
   group's first policy was applied, of a task in the policy's scope (``task =``, else a
   task the group's devices run), gets one ``promotions`` row per group: ``rejected`` with
   the failed gates (:meth:`fleet.policy.Gates.failures` on the run's ``final_accuracy``,
   ``final_epsilon``, ``fairness_max_gap``), else ``building``.
2. **building**: with ``[signing] key`` the fleet builds one bundle per policy target
   (``firmware_images``, the bundle gate = ``max_bundle_accuracy_drop_points``), signs it
   with that key and stores it as the version's ``bundle`` artifact (a target already
   holding one is skipped: a resumed build does not redo it); with ``approval =
   "operator"`` it waits in ``pending_approval`` for ``fedfleet policy approve ID --key
   PATH`` (the operator builds and signs on their machine, uploads, then approves).
3. **approved** / built: a rollout with the policy's waves and install-failure threshold
   (:func:`fleet.crud.rollouts.create_rollout`, what ``POST /api/v1/rollouts`` calls),
   ``rolling_out``.
4. **rolling_out**: the rollout ``succeeded`` → ``promoted`` (and the version becomes its
   task's promoted version); ``aborted`` → ``rolled_back`` with the rollout's reason.

Failures of a build or of the rollout's creation end the promotion ``failed`` with the
reason; nothing is retried behind the operator's back.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from fleet import audit
from fleet.artifacts import ArtifactStore
from fleet.db import session_scope
from fleet.errors import FleetError
from fleet.models import audit as audit_model
from fleet.models.common import utcnow
from fleet.models.devices import Device, Group
from fleet.models.ota import DriftEvent, Rollout, RolloutCreate, RolloutStatus
from fleet.models.policies import Promotion, PromotionPolicy, PromotionState
from fleet.models.registry import Artifact, ArtifactFormat, ModelVersion
from fleet.models.runs import Run
from fleet.ota.leader import Leadership
from fleet.policy import Policy, Retrain, policy_from_document

log = logging.getLogger(__name__)
_Row = TypeVar("_Row")

SYSTEM = audit.Actor(name="system:promotions", role="admin", source="cli")
#: Seconds a rollout created by a promotion gives a device to acknowledge its install.
ACK_TIMEOUT_S = 600.0


# --- pure decisions -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunFacts:
    """What the gates read from a model version's metrics (None: not reported)."""

    accuracy: float | None
    epsilon: float | None
    fairness_gap: float | None

    @classmethod
    def of(cls, metrics: dict[str, Any]) -> RunFacts:
        def number(key: str) -> float | None:
            value = metrics.get(key)
            return float(value) if isinstance(value, int | float) else None

        return cls(
            accuracy=number("final_accuracy"),
            epsilon=number("final_epsilon"),
            fairness_gap=number("fairness_max_gap"),
        )


def gate_decision(policy: Policy, facts: RunFacts) -> tuple[PromotionState, str]:
    """``rejected`` with every failed gate, else ``building`` with what passed."""
    failures = policy.gates.failures(
        accuracy=facts.accuracy, epsilon=facts.epsilon, fairness_gap=facts.fairness_gap
    )
    if failures:
        return PromotionState.rejected, "gates failed: " + "; ".join(failures)
    passed = [f"accuracy {facts.accuracy:g} >= {policy.gates.min_accuracy:g}"]
    if policy.gates.max_epsilon is not None:
        passed.append(f"epsilon {facts.epsilon:g} <= {policy.gates.max_epsilon:g}")
    if policy.gates.max_fairness_gap is not None:
        gap = "not measured" if facts.fairness_gap is None else f"{facts.fairness_gap:g}"
        passed.append(f"fairness gap {gap} <= {policy.gates.max_fairness_gap:g}")
    return PromotionState.building, "gates passed: " + "; ".join(passed)


def in_scope(policy: Policy, *, task: str, group_tasks: set[str]) -> bool:
    """Whether a model version of ``task`` is promoted under ``policy``: its ``task``
    when it names one, else the tasks the group's devices already run."""
    return task == policy.task if policy.task is not None else task in group_tasks


def rollout_request(policy: Policy, *, model_version_id: int) -> RolloutCreate:
    """The rollout a promotion creates: the policy's waves, install-failure threshold,
    soak and quality thresholds (``Canary.rollout_fields``)."""
    return RolloutCreate(
        model_version_id=model_version_id,
        group=policy.group,
        ack_timeout_s=ACK_TIMEOUT_S,
        **policy.canary.rollout_fields(),
    )


def outcome(status: RolloutStatus, reason: str) -> tuple[PromotionState, str] | None:
    """The promotion's end once its rollout finished (None: still going)."""
    if status is RolloutStatus.succeeded:
        return PromotionState.promoted, "the rollout reached every wave"
    if status is RolloutStatus.aborted:
        return PromotionState.rolled_back, f"the rollout aborted: {reason or 'no reason given'}"
    return None


def retrain_decision(
    retrain: Retrain, *, now: datetime, recent: list[datetime]
) -> tuple[bool, str]:
    """Whether a drift event starts a retraining run now, and why (not).

    ``recent``: when the group's earlier drift-started runs were created. The policy's
    ``cooldown_s`` counts from the newest; ``max_runs_per_day`` over the last 24 hours.
    """
    if not retrain.enabled:
        return False, "retraining on drift is off in the policy ([retrain] enabled = false)"
    day = [t for t in recent if (now - t).total_seconds() < 86400]
    if len(day) >= retrain.max_runs_per_day:
        return False, (
            f"{len(day)} drift-started run(s) in the last 24 h, the policy allows "
            f"{retrain.max_runs_per_day}"
        )
    if recent:
        since = (now - max(recent)).total_seconds()
        if since < retrain.cooldown_s:
            return False, (
                f"cooldown: the last drift-started run was {since:.0f} s ago, the policy "
                f"waits {retrain.cooldown_s:g} s"
            )
    return True, (
        f"drift agreed; {len(day)} of {retrain.max_runs_per_day} drift-started runs in the "
        f"last 24 h, cooldown {retrain.cooldown_s:g} s passed"
    )


# --- bundle building ------------------------------------------------------------------


class BundleBuilder(Protocol):
    def __call__(
        self,
        *,
        task: str,
        checkpoint: Path,
        target: str,
        key: Path,
        out: Path,
        model_version: int,
        max_drop_points: float,
        data_seed: int,
    ) -> Mapping[str, int] | None: ...


def build_bundle_file(
    *,
    task: str,
    checkpoint: Path,
    target: str,
    key: Path,
    out: Path,
    model_version: int,
    max_drop_points: float,
    data_seed: int,
) -> Mapping[str, int] | None:
    """Build, gate and sign one bundle with ``firmware_images`` (what ``image build
    --model`` does), the recipe's accuracy gate replaced by the policy's; return the
    bundle's predicted-class counts on the gate's held-out set (its reference)."""
    from firmware_images.build import BuildRequest, build_bundle
    from firmware_images.targets import GateRecipe, resolve_target

    recipe = resolve_target(target)
    recipe = replace(recipe, gate=GateRecipe(max_accuracy_drop=max_drop_points))
    return build_bundle(
        BuildRequest(
            recipe=recipe,
            task=task,
            checkpoint=checkpoint,
            key=key,
            out=out,
            model_version=str(model_version),
            data_seed=data_seed,
        )
    ).prediction_counts


@dataclass(frozen=True, slots=True)
class _BuildJob:
    promotion_id: int
    model_version_id: int
    task: str
    checkpoint: Path
    key: Path
    targets: tuple[str, ...]
    max_drop_points: float
    data_seed: int


# --- the controller -------------------------------------------------------------------


@dataclass
class PromotionController:
    """Advance every unfinished promotion one state per :meth:`step` (see the module)."""

    engine: Engine
    store: ArtifactStore
    build: BundleBuilder = build_bundle_file
    now: Callable[[], datetime] = utcnow
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def step(self) -> None:
        with self._lock:  # one step at a time, even when a test calls it by hand
            self._retrain()
            self._enqueue()
            for promotion_id in self._unfinished():
                try:
                    self._advance(promotion_id)
                except Exception:  # one bad promotion never stops the others
                    log.exception("promotion %s: step failed", promotion_id)

    # 1. enqueue

    def _enqueue(self) -> None:
        with session_scope(self.engine, write=True) as session:
            for group, policy_row, first_at in _current_policies(session):
                policy = policy_from_document(policy_row.document)
                tasks = _group_tasks(session, group.id or 0)
                for model in _new_models(session, group.id or 0, since=first_at):
                    if in_scope(policy, task=model.task, group_tasks=tasks):
                        self._open(session, group, policy_row, policy, model)

    def _open(
        self,
        session: Session,
        group: Group,
        policy_row: PromotionPolicy,
        policy: Policy,
        model: ModelVersion,
    ) -> None:
        state, reason = gate_decision(policy, RunFacts.of(model.metrics))
        promotion = Promotion(
            group_id=group.id or 0,
            policy_id=policy_row.id or 0,
            model_version_id=model.id or 0,
            state=state,
            reason=reason[:1000],
            updated_at=self.now(),
        )
        if state is PromotionState.rejected:
            promotion.decided_at = self.now()
            promotion.decided_by = SYSTEM.name
        session.add(promotion)
        session.flush()
        action = "promotion.reject" if state is PromotionState.rejected else "promotion.gates_pass"
        _audit(session, promotion, action)

    # drift -> retraining run, under the policy's [retrain]

    def _retrain(self) -> None:
        from fleet.crud.telemetry import retrain_from_event

        with session_scope(self.engine, write=True) as session:
            for group, policy_row, first_at in _current_policies(session):
                policy = policy_from_document(policy_row.document)
                for event in _open_drift_events(session, group.id or 0, since=first_at):
                    replaced = _superseded(session, event)
                    if replaced is not None:
                        _note_once(session, event, "promotion.retrain_skip", replaced)
                        continue
                    now = self.now()
                    start, reason = retrain_decision(
                        policy.retrain, now=now, recent=_drift_runs(session, group.id or 0)
                    )
                    if not start:
                        _note_once(session, event, "promotion.retrain_wait", reason)
                        continue
                    run = retrain_from_event(session, event, actor=SYSTEM)
                    audit.record(
                        session,
                        actor=SYSTEM,
                        action="promotion.retrain",
                        entity_type="drift_event",
                        entity_id=event.id or 0,
                        after={
                            "run_id": run.id,
                            "model_version_id": event.model_version_id,
                            "group": group.name,
                            "reason": f"retraining run {run.id} created: {reason}",
                        },
                    )

    # 2-4. advance

    def _unfinished(self) -> list[int]:
        with session_scope(self.engine, write=False) as session:
            active = [
                PromotionState.building,
                PromotionState.approved,
                PromotionState.rolling_out,
            ]
            ids = session.exec(
                select(Promotion.id)
                .where(col(Promotion.state).in_(active))
                .order_by(col(Promotion.id))
            ).all()
        return [i for i in ids if i is not None]

    def _advance(self, promotion_id: int) -> None:
        with session_scope(self.engine, write=False) as session:
            promotion = session.get(Promotion, promotion_id)
            state = promotion.state if promotion is not None else None
        if state is PromotionState.building:
            self._build(promotion_id)
        elif state is PromotionState.approved:
            self._roll_out(promotion_id)
        elif state is PromotionState.rolling_out:
            self._watch(promotion_id)

    def _build(self, promotion_id: int) -> None:
        job = self._build_job(promotion_id)
        if job is None:
            return
        try:
            with tempfile.TemporaryDirectory(prefix="fedfleet-promotion-") as scratch:
                for target in job.targets:
                    self._build_one(job, target, Path(scratch) / f"{target}.bundle")
        except Exception as err:  # any build failure ends the promotion
            reason = f"bundle build failed: {_one_line(err)}"
            self._finish(promotion_id, PromotionState.failed, reason, "promotion.fail")
            return
        self._roll_out(promotion_id)

    def _build_job(self, promotion_id: int) -> _BuildJob | None:
        """What to build; None when the promotion waits for an operator instead."""
        with session_scope(self.engine, write=True) as session:
            promotion = _get(session, promotion_id)
            policy = _policy(session, promotion)
            model = _model(session, promotion.model_version_id)
            if policy.signing.key is None:
                promotion.state = PromotionState.pending_approval
                promotion.reason = (
                    "waiting for an operator to sign offline: `fedfleet policy approve "
                    f"{promotion.id} --key PATH`"
                )
                promotion.updated_at = self.now()
                session.add(promotion)
                _audit(session, promotion, "promotion.await_approval")
                return None
            checkpoint = session.exec(
                select(Artifact)
                .where(
                    col(Artifact.model_version_id) == model.id,
                    col(Artifact.format) == ArtifactFormat.torch,
                )
                .order_by(col(Artifact.id))
            ).first()
            run = session.get(Run, model.source_run_id) if model.source_run_id else None
            seed = run.config.get("seed", 0) if run is not None else 0
            if checkpoint is None:
                promotion.state = PromotionState.failed
                promotion.reason = f"model version {model.id} has no torch checkpoint to build"
                promotion.updated_at = promotion.decided_at = self.now()
                session.add(promotion)
                _audit(session, promotion, "promotion.fail")
                return None
            return _BuildJob(
                promotion_id=promotion_id,
                model_version_id=model.id or 0,
                task=model.task,
                checkpoint=self.store.path_for(checkpoint.sha256),
                key=Path(policy.signing.key),
                targets=policy.targets,
                max_drop_points=policy.gates.max_bundle_accuracy_drop_points,
                data_seed=seed if isinstance(seed, int) else 0,
            )

    def _build_one(self, job: _BuildJob, target: str, out: Path) -> None:
        from firmware_images.keys import load_private_key, sign_digest
        from fleet.crud.registry import add_artifact, find_artifact

        with session_scope(self.engine, write=False) as session:
            if find_artifact(
                session, job.model_version_id, format=ArtifactFormat.bundle, target=target
            ):
                return  # built before a restart
        reference = self.build(
            task=job.task,
            checkpoint=job.checkpoint,
            target=target,
            key=job.key,
            out=out,
            model_version=job.model_version_id,
            max_drop_points=job.max_drop_points,
            data_seed=job.data_seed,
        )
        with out.open("rb") as source:
            stored = self.store.save(source, max_bytes=2**40)
        signature = sign_digest(load_private_key(job.key), stored.sha256)
        with session_scope(self.engine, write=True) as session:
            model = _model(session, job.model_version_id)
            if reference and model.reference_predictions is None:  # the first target's
                model.reference_predictions = dict(reference)
                session.add(model)
            add_artifact(
                session,
                model,
                format=ArtifactFormat.bundle,
                target=target,
                filename=f"{job.task}-v{job.model_version_id}-{target}.bundle",
                size_bytes=stored.size_bytes,
                sha256=stored.sha256,
                signature=signature,
                actor=SYSTEM,
            )
            promotion = _get(session, job.promotion_id)
            promotion.reason = f"built and signed the bundle for {target}"
            promotion.updated_at = self.now()
            session.add(promotion)
            _audit(session, promotion, "promotion.bundle_built")

    def _roll_out(self, promotion_id: int) -> None:
        from fleet.crud.rollouts import create_rollout

        with session_scope(self.engine, write=True) as session:
            promotion = _get(session, promotion_id)
            policy = _policy(session, promotion)
            request = rollout_request(policy, model_version_id=promotion.model_version_id)
            try:
                with session.begin_nested():
                    rollout = create_rollout(session, request, actor=SYSTEM)
            except FleetError as err:
                promotion.state = PromotionState.failed
                promotion.reason = f"the rollout could not be created: {_one_line(err)}"[:1000]
                promotion.decided_at = self.now()
                _audit(session, _touch(promotion, self.now()), "promotion.fail")
                return
            promotion.state = PromotionState.rolling_out
            promotion.rollout_id = rollout.id
            waves = ", ".join(f"{w}%" for w in policy.canary.waves)
            promotion.reason = (
                f"rollout {rollout.id} created: waves {waves}, abort above "
                f"{policy.canary.max_install_failure_rate:g} failed installs"
            )
            _audit(session, _touch(promotion, self.now()), "promotion.rollout")

    def _watch(self, promotion_id: int) -> None:
        with session_scope(self.engine, write=False) as session:
            promotion = _get(session, promotion_id)
            rollout = session.get(Rollout, promotion.rollout_id) if promotion.rollout_id else None
            ended = outcome(rollout.status, rollout.reason) if rollout is not None else None
        if ended is None:
            return
        state, reason = ended
        action = "promotion.promote" if state is PromotionState.promoted else "promotion.roll_back"
        self._finish(promotion_id, state, reason, action)

    def _finish(self, promotion_id: int, state: PromotionState, reason: str, action: str) -> None:
        from fleet.crud.registry import promote_model

        with session_scope(self.engine, write=True) as session:
            promotion = _get(session, promotion_id)
            promotion.state = state
            promotion.reason = reason[:1000]
            promotion.decided_at = self.now()
            promotion.decided_by = SYSTEM.name
            if state is PromotionState.promoted:
                model = _model(session, promotion.model_version_id)
                promote_model(session, model, actor=SYSTEM)
            _audit(session, _touch(promotion, self.now()), action)


def _touch(promotion: Promotion, now: datetime) -> Promotion:
    promotion.updated_at = now
    return promotion


def _get(session: Session, promotion_id: int) -> Promotion:
    return _row(session, Promotion, promotion_id)


def _model(session: Session, model_id: int) -> ModelVersion:
    return _row(session, ModelVersion, model_id)


def _row(session: Session, table: type[_Row], row_id: int) -> _Row:
    """A row the promotion's foreign keys guarantee; LookupError if it vanished anyway."""
    row = session.get(table, row_id)
    if row is None:
        raise LookupError(f"{table.__name__} {row_id} is gone")
    return row


def _policy(session: Session, promotion: Promotion) -> Policy:
    return policy_from_document(_row(session, PromotionPolicy, promotion.policy_id).document)


def _audit(session: Session, promotion: Promotion, action: str) -> None:
    from fleet.crud.policies import promotion_public

    session.flush()
    audit.record(
        session,
        actor=SYSTEM,
        action=action,
        entity_type="promotion",
        entity_id=promotion.id or 0,
        after=promotion_public(session, promotion),
    )


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:900]


def _current_policies(session: Session) -> list[tuple[Group, PromotionPolicy, datetime]]:
    """Each group with a policy: its group, current version and first version's time."""
    spans = (
        select(
            PromotionPolicy.group_id,
            func.max(PromotionPolicy.version).label("v"),
            func.min(PromotionPolicy.created_at).label("first"),
        )
        .group_by(col(PromotionPolicy.group_id))
        .subquery()
    )
    rows = session.exec(
        select(PromotionPolicy, Group, spans.c.first)
        .join(
            spans,
            (col(PromotionPolicy.group_id) == spans.c.group_id)
            & (col(PromotionPolicy.version) == spans.c.v),
        )
        .join(Group, col(Group.id) == col(PromotionPolicy.group_id))
    ).all()
    return [(group, row, first) for row, group, first in rows]


def _group_tasks(session: Session, group_id: int) -> set[str]:
    return set(
        session.exec(
            select(ModelVersion.task)
            .join(Device, col(Device.model_version_id) == col(ModelVersion.id))
            .where(col(Device.group_id) == group_id, col(Device.retired_at).is_(None))
            .distinct()
        ).all()
    )


def _new_models(session: Session, group_id: int, *, since: datetime) -> list[ModelVersion]:
    """Versions registered from a run since ``since`` with no promotion for the group yet."""
    taken = select(Promotion.model_version_id).where(col(Promotion.group_id) == group_id)
    return list(
        session.exec(
            select(ModelVersion)
            .where(
                col(ModelVersion.source_run_id).is_not(None),
                col(ModelVersion.created_at) >= since,
                col(ModelVersion.id).not_in(taken),
            )
            .order_by(col(ModelVersion.id))
        ).all()
    )


def _open_drift_events(session: Session, group_id: int, *, since: datetime) -> list[DriftEvent]:
    """The group's drift events since its first policy that started no run yet."""
    return list(
        session.exec(
            select(DriftEvent)
            .where(
                col(DriftEvent.group_id) == group_id,
                col(DriftEvent.run_id).is_(None),
                col(DriftEvent.created_at) >= since,
            )
            .order_by(col(DriftEvent.id))
        ).all()
    )


def _drift_runs(session: Session, group_id: int) -> list[datetime]:
    """When the group's drift-started runs were created."""
    return list(
        session.exec(
            select(Run.created_at)
            .join(DriftEvent, col(DriftEvent.run_id) == col(Run.id))
            .where(col(DriftEvent.group_id) == group_id)
        ).all()
    )


def _superseded(session: Session, event: DriftEvent) -> str | None:
    """Why ``event`` starts no run: another model version was promoted to its group after
    the drift was detected (None: the event's model is still the group's). The drifted
    windows that keep arriving after a first event make more events on the same model;
    once its retrained successor is promoted they must not retrain the replaced model
    again when the cooldown ends."""
    newer = session.exec(
        select(Promotion)
        .where(
            col(Promotion.group_id) == event.group_id,
            col(Promotion.state) == PromotionState.promoted,
            col(Promotion.model_version_id) != event.model_version_id,
            col(Promotion.decided_at) >= event.created_at,
        )
        .order_by(col(Promotion.id))
    ).first()
    if newer is None:
        return None
    return (
        f"superseded: model version {newer.model_version_id} was promoted to the group "
        f"after this drift on model version {event.model_version_id}"
    )


def _note_once(session: Session, event: DriftEvent, action: str, reason: str) -> None:
    """Audit why ``event`` waits, once per distinct reason (not every step)."""
    last = session.exec(
        select(audit_model.AuditEvent.after)
        .where(
            col(audit_model.AuditEvent.entity_type) == "drift_event",
            col(audit_model.AuditEvent.entity_id) == str(event.id),
            col(audit_model.AuditEvent.action) == action,
        )
        .order_by(col(audit_model.AuditEvent.id).desc())
    ).first()
    shown = reason.split(":", 1)[0]  # "cooldown", or the count line: not every second
    if last is not None and str(last.get("reason", "")).split(":", 1)[0] == shown:
        return
    audit.record(
        session,
        actor=SYSTEM,
        action=action,
        entity_type="drift_event",
        entity_id=event.id or 0,
        after={"model_version_id": event.model_version_id, "reason": reason},
    )


# --- the thread -----------------------------------------------------------------------


def start_promotions(
    engine: Engine, store: ArtifactStore, *, interval_s: float, schema: str | None = None
) -> Callable[[], None]:
    """Step a :class:`PromotionController` every ``interval_s`` seconds in a daemon
    thread; returns the function that stops it (and waits for the step under way).

    Only the process holding the ``promotions`` leader lock steps (a PostgreSQL advisory
    lock, :mod:`fleet.ota.leader`): ``fleet serve --workers N`` and replicas behind a load
    balancer run one promotion controller between them, and another takes over when its
    holder dies. On SQLite the one process always leads."""
    controller = PromotionController(engine=engine, store=store)
    leadership = Leadership(engine, schema=schema, role="promotions")
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            try:
                if leadership.check():
                    controller.step()
            except Exception:
                log.exception("promotion controller step failed; next step in %ss", interval_s)

    thread = threading.Thread(target=loop, name="fleet-promotions", daemon=True)
    thread.start()

    def close() -> None:
        stop.set()
        thread.join(timeout=60)
        leadership.close()

    return close
