"""Federated runs and their per-round reports."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func
from sqlmodel import Session, col, select

from fleet import audit
from fleet.audit import Actor
from fleet.errors import Conflict, InvalidReference
from fleet.models.common import Page, utcnow
from fleet.models.registry import ModelVersion
from fleet.models.runs import (
    RUN_TRANSITIONS,
    Participant,
    RoundReport,
    Run,
    RunCreate,
    RunDetail,
    RunPublic,
    RunRound,
    RunRoundPublic,
    RunStatus,
    RunUpdate,
)


def get_run(session: Session, run_id: int) -> Run | None:
    return session.get(Run, run_id)


def _rounds(session: Session, run_id: int) -> list[RunRound]:
    return list(
        session.exec(
            select(RunRound).where(RunRound.run_id == run_id).order_by(col(RunRound.round))
        ).all()
    )


def _summary(session: Session, run_ids: Sequence[int]) -> dict[int, tuple[int, float | None]]:
    """(rounds reported, accuracy of the latest round) per run."""
    if not run_ids:
        return {}
    counts = dict(
        session.exec(
            select(RunRound.run_id, func.count())
            .where(col(RunRound.run_id).in_(list(run_ids)))
            .group_by(col(RunRound.run_id))
        ).all()
    )
    latest = (
        select(RunRound.run_id, func.max(RunRound.round).label("last"))
        .where(col(RunRound.run_id).in_(list(run_ids)))
        .group_by(col(RunRound.run_id))
        .subquery()
    )
    accuracy = dict(
        session.exec(
            select(RunRound.run_id, RunRound.accuracy).join(
                latest,
                (col(RunRound.run_id) == latest.c.run_id) & (col(RunRound.round) == latest.c.last),
            )
        ).all()
    )
    return {rid: (counts.get(rid, 0), accuracy.get(rid)) for rid in run_ids}


def _public(run: Run, summary: tuple[int, float | None]) -> RunPublic:
    return RunPublic(
        id=run.id or 0,
        name=run.name,
        task=run.task,
        strategy=run.strategy,
        config=dict(run.config),
        status=run.status,
        created_at=run.created_at,
        created_by=run.created_by,
        started_at=run.started_at,
        finished_at=run.finished_at,
        final_model_version_id=run.final_model_version_id,
        rounds_completed=summary[0],
        last_accuracy=summary[1],
    )


def _round_public(row: RunRound) -> RunRoundPublic:
    return RunRoundPublic(
        round=row.round,
        accuracy=row.accuracy,
        loss=row.loss,
        duration_s=row.duration_s,
        epsilon=row.epsilon,
        metrics=dict(row.metrics),
        participants=[Participant.model_validate(p) for p in row.participants],
        recorded_at=row.recorded_at,
    )


def public_view(session: Session, run: Run) -> RunPublic:
    return _public(run, _summary(session, [run.id or 0])[run.id or 0])


def detail_view(session: Session, run: Run) -> RunDetail:
    """A run with every round and everyone who took part."""
    rounds = _rounds(session, run.id or 0)
    seen: dict[tuple[str, str], Participant] = {}
    for row in rounds:
        for item in row.participants:
            participant = Participant.model_validate(item)
            seen.setdefault((participant.kind.value, participant.id), participant)
    summary = (len(rounds), rounds[-1].accuracy if rounds else None)
    return RunDetail(
        **_public(run, summary).model_dump(),
        rounds=[_round_public(r) for r in rounds],
        participants=sorted(seen.values(), key=lambda p: (p.kind.value, p.id)),
    )


def list_runs(
    session: Session,
    *,
    task: str | None,
    status: RunStatus | None,
    limit: int,
    offset: int,
) -> Page[RunPublic]:
    """Runs, newest first."""
    conditions = []
    if task is not None:
        conditions.append(col(Run.task) == task)
    if status is not None:
        conditions.append(col(Run.status) == status)
    total = session.exec(select(func.count()).select_from(Run).where(*conditions)).one()
    runs = session.exec(
        select(Run).where(*conditions).order_by(col(Run.id).desc()).limit(limit).offset(offset)
    ).all()
    summary = _summary(session, [r.id or 0 for r in runs])
    items = [_public(r, summary[r.id or 0]) for r in runs]
    return Page[RunPublic](items=items, total=total, limit=limit, offset=offset)


def create_run(session: Session, data: RunCreate, *, actor: Actor) -> Run:
    run = Run(
        name=data.name,
        task=data.task,
        strategy=data.strategy or "",
        config=dict(data.config),
        created_by=actor.name,
    )
    session.add(run)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="run.create",
        entity_type="run",
        entity_id=run.id or 0,
        after=public_view(session, run),
    )
    return run


def _transition(run: Run, status: RunStatus) -> None:
    if status == run.status:
        return
    if status not in RUN_TRANSITIONS[run.status]:
        allowed = ", ".join(sorted(s.value for s in RUN_TRANSITIONS[run.status])) or "none"
        raise Conflict(
            f"run {run.id} is {run.status.value} and cannot become {status.value} "
            f"(allowed: {allowed})"
        )
    now = utcnow()
    if status is RunStatus.running or (run.started_at is None and status.terminal):
        run.started_at = run.started_at or now
    if status.terminal:
        run.finished_at = now
    run.status = status


def update_run(session: Session, run: Run, data: RunUpdate, *, actor: Actor) -> Run:
    """Change a run's status, name or final model version (``data.reason``, when given,
    is recorded with the change)."""
    before = public_view(session, run)
    if run.status.terminal and data.final_model_version_id not in (
        None,
        run.final_model_version_id,
    ):
        raise Conflict(f"run {run.id} is {run.status.value}; its final model cannot change")
    if data.final_model_version_id is not None:
        if session.get(ModelVersion, data.final_model_version_id) is None:
            raise InvalidReference(
                f"model version {data.final_model_version_id} does not exist; register it "
                "first (POST /api/v1/models)"
            )
        if data.final_model_version_id != run.final_model_version_id:
            run.final_model_version_id = data.final_model_version_id
    if data.name is not None and data.name != run.name:
        run.name = data.name
    if data.status is not None:
        _transition(run, data.status)
    session.add(run)
    session.flush()
    after = public_view(session, run)
    if after != before:
        # The timeline's "why" (fleet.crud.timeline reads after.reason).
        reason = {"reason": data.reason} if data.reason else {}
        audit.record(
            session,
            actor=actor,
            action="run.update",
            entity_type="run",
            entity_id=run.id or 0,
            before=before,
            after={**after.model_dump(mode="json"), **reason},
        )
    return run


def report_round(
    session: Session, run: Run, round_number: int, report: RoundReport, *, actor: Actor
) -> RunRound:
    """Record (or replace) a round's report; a created run becomes running."""
    if run.status.terminal:
        raise Conflict(f"run {run.id} is {run.status.value}; it takes no more rounds")
    existing = session.get(RunRound, (run.id, round_number))
    before = _round_public(existing).model_dump(mode="json") if existing else None
    row = existing or RunRound(run_id=run.id or 0, round=round_number)
    row.accuracy = report.accuracy
    row.loss = report.loss
    row.duration_s = report.duration_s
    row.epsilon = report.epsilon
    row.metrics = dict(report.metrics)
    row.participants = [p.model_dump(mode="json") for p in report.participants]
    row.recorded_at = utcnow()
    session.add(row)
    if run.status is RunStatus.created:
        _transition(run, RunStatus.running)
        session.add(run)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="run.round",
        entity_type="run",
        entity_id=run.id or 0,
        before={"round": round_number, "report": before} if before else None,
        after={"round": round_number, "report": _round_public(row).model_dump(mode="json")},
    )
    return row


def round_public(row: RunRound) -> RunRoundPublic:
    return _round_public(row)
