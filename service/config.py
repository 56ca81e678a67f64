"""The one settings object, built by `load_settings()` and passed in; never a global."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.errors import Invalid

DEFAULT_SECRET = "change-me"  # noqa: S105 - the development default that production refuses


DEFAULT_RETENTION_DAYS = {
    "decisions": 90,
    "accounting_sessions": 365,
    "flows": 90,
    "dns_queries": 90,
    "visits": 365,
    "alerts": 730,
    "bindings": 90,
    "coa_requests": 90,
}


def default_database_url() -> str:
    """A SQLite file in the working directory: one command starts a single school."""
    return f"sqlite:///{Path.cwd() / 'schoolgate.db'}"


class Settings(BaseSettings):
    """Every knob, from `SCHOOLGATE_*` environment variables or an optional TOML file.

    The TOML file is named by `SCHOOLGATE_CONFIG` (or `--config`); its top-level keys are the
    field names below. Environment variables win over the file.
    """

    model_config = SettingsConfigDict(env_prefix="SCHOOLGATE_", extra="ignore")

    environment: Literal["development", "production"] = "development"
    database_url: str = Field(default_factory=default_database_url)
    secret_key: SecretStr = SecretStr(DEFAULT_SECRET)

    # RADIUS
    radius_snapshot_poll_seconds: float = 1.0
    radius_duplicate_window_seconds: float = 5.0
    radius_log_batch_seconds: float = 0.5

    # CoA
    coa_timeout_seconds: float = 1.0
    coa_retries: int = 3
    coa_enabled: bool = True

    # Portal
    portal_url: str = "http://portal.schoolgate.local:8080/"
    portal_rate_limit_per_minute: int = 60
    portal_login_max_failures: int = 5
    portal_lockout_minutes: int = 15
    # Staff sign-in with an OpenID Connect provider (Google Workspace, Microsoft Entra), offered
    # beside local accounts when issuer and client id are set; see deploy/portal/README.md.
    portal_oidc_issuer: str | None = None
    portal_oidc_client_id: str | None = None
    portal_oidc_client_secret: SecretStr | None = None
    portal_oidc_scopes: str = "openid email profile"
    # Only emails in these domains may sign in (empty: any domain the provider vouches for).
    portal_oidc_allowed_domains: list[str] = Field(default_factory=list)
    portal_oidc_name: str | None = None  # the button's "Sign in with ..."; else from the issuer

    # Retention in days per table of personal data (UK GDPR: keep only what is needed). A file
    # or variable naming some tables changes those; the others keep these defaults.
    retention_days: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_RETENTION_DAYS))

    # RADIUS (s3, issue 11): how old the snapshot may grow while the database cannot be
    # reached before RADIUS stops answering from it (then `[radius] when_stale` of the policy).
    radius_max_stale_seconds: float = Field(default=300.0, gt=0)

    @field_validator("retention_days", mode="after")
    @classmethod
    def _merge_retention_defaults(cls, value: dict[str, int]) -> dict[str, int]:
        bad = {k: v for k, v in value.items() if v < 1}
        if bad:
            raise ValueError(f"retention_days must be at least 1 day: {bad}")
        return {**DEFAULT_RETENTION_DAYS, **value}

    @model_validator(mode="after")
    def _refuse_default_secret_in_production(self) -> Settings:
        if self.environment == "production" and (
            self.secret_key.get_secret_value() in ("", DEFAULT_SECRET)
        ):
            raise ValueError("SCHOOLGATE_SECRET_KEY must be set to a random value in production")
        return self


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build settings from the optional TOML file, the environment and explicit overrides."""
    file_values: dict[str, Any] = {}
    path = config_file or os.environ.get("SCHOOLGATE_CONFIG")
    if path:
        try:
            with Path(path).open("rb") as handle:
                file_values = tomllib.load(handle)
        except OSError as exc:
            raise Invalid(f"cannot read config file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise Invalid(f"config file {path} is not valid TOML: {exc}") from exc
    env_names = {f"SCHOOLGATE_{name.upper()}" for name in Settings.model_fields}
    # Environment beats the file: drop file keys that the environment sets.
    for name in list(file_values):
        if f"SCHOOLGATE_{name.upper()}" in env_names and f"SCHOOLGATE_{name.upper()}" in os.environ:
            del file_values[name]
    values = {**file_values, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return Settings(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        raise Invalid(f"bad setting {where}: {first['msg']}") from exc
