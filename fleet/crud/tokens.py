"""API tokens and dashboard sessions."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, or_
from sqlmodel import Session, col, select

from fleet import audit, credentials
from fleet.audit import Actor
from fleet.models.auth import ApiToken, ApiTokenPublic, DashboardSession, Role
from fleet.models.common import utcnow


def token_public(token: ApiToken) -> ApiTokenPublic:
    """The public view of a token (never its hash)."""
    return ApiTokenPublic.model_validate(token, from_attributes=True)


def create_token(
    session: Session, *, name: str, role: Role, actor: Actor, ttl_days: int | None = None
) -> tuple[str, ApiToken]:
    """Create a token. Returns ``(secret, row)``; the secret is not stored anywhere."""
    secret = credentials.new_api_token()
    now = utcnow()
    token = ApiToken(
        name=name,
        role=role,
        token_hash=credentials.hash_secret(secret),
        prefix=secret[:12],
        created_at=now,
        created_by=actor.name,
        expires_at=None if ttl_days is None else now + timedelta(days=ttl_days),
    )
    session.add(token)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="token.create",
        entity_type="token",
        entity_id=token.id or 0,
        after=token_public(token),
    )
    return secret, token


def find_active_token(session: Session, secret: str, *, now: datetime) -> ApiToken | None:
    """The unrevoked, unexpired token whose secret is ``secret``, or None."""
    statement = select(ApiToken).where(
        ApiToken.token_hash == credentials.hash_secret(secret),
        col(ApiToken.revoked_at).is_(None),
        or_(col(ApiToken.expires_at).is_(None), col(ApiToken.expires_at) > now),
    )
    return session.exec(statement).first()


def list_tokens(session: Session) -> list[ApiToken]:
    """Every token, newest first (revoked ones included, marked by ``revoked_at``)."""
    return list(session.exec(select(ApiToken).order_by(col(ApiToken.id).desc())).all())


def revoke_token(session: Session, token_id: int, *, actor: Actor) -> ApiToken | None:
    """Revoke a token and end its dashboard sessions. None if there is no such token."""
    token = session.get(ApiToken, token_id)
    if token is None:
        return None
    if token.revoked_at is not None:
        return token
    before = token_public(token)
    token.revoked_at = utcnow()
    session.add(token)
    session.execute(delete(DashboardSession).where(col(DashboardSession.token_id) == token_id))
    audit.record(
        session,
        actor=actor,
        action="token.revoke",
        entity_type="token",
        entity_id=token_id,
        before=before,
        after=token_public(token),
    )
    return token


def open_dashboard_session(session: Session, *, token: ApiToken, ttl_s: int, actor: Actor) -> str:
    """Start a dashboard session for ``token``; returns the cookie secret."""
    secret = credentials.new_session_secret()
    now = utcnow()
    session.execute(delete(DashboardSession).where(col(DashboardSession.expires_at) < now))
    session.add(
        DashboardSession(
            session_hash=credentials.hash_secret(secret),
            token_id=token.id or 0,
            created_at=now,
            expires_at=now + timedelta(seconds=ttl_s),
        )
    )
    audit.record(
        session,
        actor=actor,
        action="dashboard.login",
        entity_type="token",
        entity_id=token.id or 0,
    )
    return secret


def find_dashboard_session(
    session: Session, secret: str, *, now: datetime
) -> tuple[DashboardSession, ApiToken] | None:
    """The live session for a cookie secret and its still-valid token, or None."""
    statement = (
        select(DashboardSession, ApiToken)
        .join(ApiToken, col(ApiToken.id) == col(DashboardSession.token_id))
        .where(
            DashboardSession.session_hash == credentials.hash_secret(secret),
            col(DashboardSession.expires_at) > now,
            col(ApiToken.revoked_at).is_(None),
            or_(col(ApiToken.expires_at).is_(None), col(ApiToken.expires_at) > now),
        )
    )
    row = session.exec(statement).first()
    return None if row is None else (row[0], row[1])


def close_dashboard_session(session: Session, secret: str, *, actor: Actor) -> None:
    """End the session for a cookie secret (logging out)."""
    result = session.execute(
        delete(DashboardSession).where(
            col(DashboardSession.session_hash) == credentials.hash_secret(secret)
        )
    )
    if getattr(result, "rowcount", 0):
        audit.record(
            session, actor=actor, action="dashboard.logout", entity_type="session", entity_id="-"
        )
