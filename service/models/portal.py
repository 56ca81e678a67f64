"""Tables owned by the portal area: bearer tokens for the admin HTTP API.

Portal sign-in state is not stored: captive browsers drop cookies, so it travels in
HMAC-signed form fields (see `portal.tokens`). Rate-limit state is per process, in memory;
the sign-in throttle's counts are shared (`service/models/throttle.py`).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from service.models.base import Base, UTCDateTime, intpk, utc, utcnow


class ApiToken(Base):
    """A bearer token for `/api/v1`; only the SHA-256 of the secret is kept."""

    __tablename__ = "api_tokens"

    id: Mapped[intpk]
    name: Mapped[str] = mapped_column(String(128))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    scopes: Mapped[str] = mapped_column(String(512))  # space-separated, e.g. "devices:write"
    created_by: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[utc] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
