"""Is the database there? The one question the readiness probes ask (`/readyz`)."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from service.db import describe_database_error


def database_problem(*, session: Session) -> str | None:
    """None when the database answers `SELECT 1` through this session, else one line saying
    why not (`database: ...`). The session's first statement opens the connection, so this
    asks the server itself, not a cache."""
    try:
        session.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        session.rollback()
        return describe_database_error(exc)
    return None
