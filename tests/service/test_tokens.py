"""API tokens as service functions: created and revoked with an audit entry, authenticated by
their secret alone (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from service import audit
from service.db import transaction
from service.enums import AuditTag
from service.errors import Conflict, Invalid, NotFound
from service.models import AuditEntry
from service.tokens import authenticate_token, create_token, list_tokens, revoke_token


def test_a_token_is_created_listed_used_and_revoked_with_audit(westgate, session_factory) -> None:
    with transaction(session_factory) as session:
        info, secret = create_token(
            session=session, name=" mdm sync ", scopes=["devices:write"], actor="admin"
        )
    assert secret.startswith("sgt_")
    assert info.name == "mdm sync"
    assert info.prefix == secret[:10]
    with transaction(session_factory) as session:
        caller = authenticate_token(session=session, secret=secret)
    assert caller.name == "mdm sync"
    assert caller.allows("devices:write")
    assert caller.allows("devices:read")  # write grants read
    assert not caller.allows("signatures:read")
    with transaction(session_factory) as session:
        [listed] = list_tokens(session=session)
        assert listed.last_used_at is not None
        assert secret not in repr(listed)
        revoked = revoke_token(session=session, token_id=info.id, actor="admin")
        assert revoked.revoked_at is not None
    with transaction(session_factory) as session:
        with pytest.raises(Invalid, match="not valid"):
            authenticate_token(session=session, secret=secret)
        with pytest.raises(Conflict):
            revoke_token(session=session, token_id=info.id, actor="admin")
        with pytest.raises(NotFound):
            revoke_token(session=session, token_id=info.id + 99, actor="admin")
        tags = session.scalars(
            select(AuditEntry.tag).where(AuditEntry.subject == f"token:{info.id}")
        ).all()
        assert tags == [AuditTag.TOKEN_CREATE.value, AuditTag.TOKEN_REVOKE.value]
        assert audit.verify(session).ok


def test_bad_token_requests_are_refused(westgate, session_factory) -> None:
    with transaction(session_factory) as session:
        with pytest.raises(Invalid, match="needs a name"):
            create_token(session=session, name=" ", scopes=["devices:read"], actor="a")
        with pytest.raises(Invalid, match="at least one"):
            create_token(session=session, name="x", scopes=[], actor="a")
        with pytest.raises(Invalid, match="unknown scope"):
            create_token(session=session, name="x", scopes=["root"], actor="a")
        with pytest.raises(Invalid):
            authenticate_token(session=session, secret="sgt_nothing")
