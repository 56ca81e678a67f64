"""The one settings object, built by `load_settings()` and passed in; never a global."""

from __future__ import annotations

import ipaddress
import json
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.errors import Invalid
from service.secrets_store import (
    ANCHOR_FILE,
    AUDIT_KEY_FILE,
    MIN_KEY_LENGTH,
    SECRET_KEY_FILE,
    key_weakness,
    read_key,
)

DEFAULT_RETENTION_DAYS = {
    "decisions": 90,
    "accounting_sessions": 365,
    "flows": 90,
    "dns_queries": 90,
    "visits": 365,
    "alerts": 730,
    "bindings": 90,
    "coa_requests": 90,
    "device_names": 90,  # names devices announced (mDNS, NetBIOS, DHCP): by last seen
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
    # No default: `schoolgate db upgrade` generates one into state_dir (see the end of the class)
    # and it is read from there when this is unset; servers refuse a weak one off loopback.
    secret_key: SecretStr | None = None

    # RADIUS
    radius_snapshot_poll_seconds: float = 0.25  # p3 (issue 12): was 1.0; a CoA waits for it
    radius_duplicate_window_seconds: float = 5.0
    radius_log_batch_seconds: float = 0.5

    # CoA
    coa_timeout_seconds: float = 1.0
    coa_retries: int = 3
    coa_enabled: bool = True

    # Portal
    portal_url: str = "http://portal.schoolgate.local:8080/"
    portal_rate_limit_per_minute: int = 60
    portal_login_max_failures: int = 5  # free failed sign-ins before the backoff starts
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
    # Issue 13 (sp): while the database cannot be reached, each RADIUS worker spools accounting
    # and decision rows to state_dir/spool/ (radius/spool.py), at most this many bytes per file
    # (two files per worker); past it accounting is not answered and decisions are lost.
    radius_spool_max_bytes: int = Field(default=256 * 1024 * 1024, ge=4096)
    # An accounting session with no Stop (the NAS rebooted, the Stop was lost) stops binding
    # its IP to its device this long after its last Start or Interim-Update (issue 14): for
    # `who`, `export bindings` and the monitor's attribution. Default 4 h: well over twice the
    # usual Acct-Interim-Interval (5-15 min); raise it for a NAS that sends no interim updates.
    accounting_stale_after: float = Field(default=4 * 3600.0, gt=0)
    # A running monitor reads the devices and accounting sessions changed since its last look
    # this often (monitor/attribution.py AttributionFeed): a phone that joined this morning is
    # named on its flows without restarting a monitor started yesterday.
    monitor_refresh_seconds: float = Field(default=30.0, gt=0)

    @field_validator("retention_days", mode="after")
    @classmethod
    def _merge_retention_defaults(cls, value: dict[str, int]) -> dict[str, int]:
        bad = {k: v for k, v in value.items() if v < 1}
        if bad:
            raise ValueError(f"retention_days must be at least 1 day: {bad}")
        return {**DEFAULT_RETENTION_DAYS, **value}

    # Keys outside the database (issue 11): `db upgrade` writes secret.key and audit.key here
    # (0600) and the audit chain's anchor log audit-anchor.log; default: the SQLite file's
    # directory, else the working directory. See `key_dir` and service/secrets_store.py.
    state_dir: Path | None = None
    # Keys the audit chain's HMAC; unset: read from state_dir/audit.key. Never in the database.
    audit_key: SecretStr | None = None
    # Where the audit chain's head is appended after each audited change (and by `audit
    # anchor`); default state_dir/audit-anchor.log. Keep a copy off the machine (syslog).
    audit_anchor_file: Path | None = None
    # Also send each anchored head to the local syslog (/dev/log, the journal) when present.
    audit_anchor_syslog: bool = True

    @model_validator(mode="after")
    def _refuse_weak_secret_in_production(self) -> Settings:
        for name in ("secret_key", "audit_key"):
            value: SecretStr | None = getattr(self, name)
            if self.environment == "production" and value is not None:
                why = key_weakness(value.get_secret_value())
                if why:
                    raise ValueError(
                        f"SCHOOLGATE_{name.upper()} is {why}: production needs "
                        f"{MIN_KEY_LENGTH}+ random characters (or unset it and run "
                        "`schoolgate db upgrade` to generate one)"
                    )
        return self

    # --- s4 (issue 11): sign-in throttle, admin networks, readiness -----------------------
    # After `portal_login_max_failures` failures each further staff sign-in (portal) waits
    # 1, 2, 4 ... seconds, up to these caps: per source (client IP / MAC) and per account
    # name. The account cap is low so an attacker cannot keep the real owner out for long.
    signin_backoff_source_max_seconds: float = Field(default=900.0, ge=1)
    signin_backoff_account_max_seconds: float = Field(default=60.0, ge=1)
    # /api/v1 (and its docs) answer only clients in these networks (after --trusted-proxy):
    # loopback by default; add the school's management subnets, e.g. ["10.0.10.0/24"]. The
    # environment takes a JSON list or commas: SCHOOLGATE_ADMIN_NETWORKS=127.0.0.1/32,10.0.10.0/24
    admin_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128"]
    )
    # The API's interactive docs and openapi.json (/api/v1/docs): off unless set.
    api_docs: bool = False
    # -- issue 12, visitor verification (p2) ------------------------------------------------
    # Email to a visitor's sponsor (`[visitor] verify = "sponsor"`) goes through this SMTP
    # server; unset, nothing is sent (the null notifier logs the message instead).
    smtp_host: str | None = None
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_from: str = "schoolgate@localhost"
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False  # STARTTLS before logging in (port 587 servers)
    smtp_timeout_seconds: float = Field(default=10.0, gt=0)
    # How long a sponsor's approve link stays valid after the visitor asks.
    sponsor_link_valid_minutes: int = Field(default=120, ge=1, le=7 * 24 * 60)

    # --- p3 (issue 12): a CoA only once every RADIUS worker has the change ----------------
    # Each RADIUS worker reports the change counter it has loaded (table radius_workers) on
    # every reload and at least this often; one not heard from for `radius_worker_dead_seconds`
    # is taken for dead and no longer waited for.
    radius_worker_heartbeat_seconds: float = Field(default=5.0, gt=0)
    radius_worker_dead_seconds: float = Field(default=20.0, gt=0)
    # How long a queued CoA / Disconnect waits for the live workers to load its change before
    # it is sent anyway (its history then says which worker it did not wait for).
    coa_wait_for_workers_seconds: float = Field(default=5.0, ge=0)

    # --- observe it (issue 13) ---------------------------------------------------------------
    # Each long-running command serves /metrics, /healthz and /readyz on this port (0: off).
    # Defaults in the docs: 9812 radius, 9813 coa, 9814 portal, 9815 monitor.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    # "json": one JSON object per log line (ts, level, logger, message and extra fields).
    log_format: Literal["text", "json"] = "text"

    @field_validator("admin_networks", mode="before")
    @classmethod
    def _admin_networks_from_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    return json.loads(text)
                except ValueError as exc:
                    raise ValueError(f"not a JSON list: {text}") from exc
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("admin_networks", mode="after")
    @classmethod
    def _admin_networks_are_networks(cls, value: list[str]) -> list[str]:
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError as exc:
                raise ValueError(f"{network!r} is not a network") from exc
        return value

    @property
    def key_dir(self) -> Path:
        """Where the generated keys and the anchor log live (the state directory)."""
        if self.state_dir is not None:
            return self.state_dir
        sqlite_file = sqlite_path(self.database_url)
        return sqlite_file.parent if sqlite_file is not None else Path.cwd()

    @property
    def anchor_file(self) -> Path:
        return self.audit_anchor_file or self.key_dir / ANCHOR_FILE


def database_url_from(value: str) -> str:
    """A database URL as typed: `schoolgate.db` or `/var/lib/schoolgate/school.db` (a plain
    path, no `scheme://`) is that SQLite file; anything else is already a URL."""
    value = value.strip()
    if not value or "://" in value or value.startswith("sqlite:"):
        return value
    return f"sqlite:///{Path(value).expanduser().absolute()}"


def sqlite_path(url: str) -> Path | None:
    """The file of a `sqlite:///path` URL; None for memory or another database."""
    for prefix in ("sqlite:///", "sqlite+pysqlite:///"):
        if url.startswith(prefix):
            rest = url[len(prefix) :].split("?", 1)[0]
            return Path(rest).absolute() if rest and rest != ":memory:" else None
    return None


def with_stored_keys(settings: Settings) -> Settings:
    """Fill the keys left unset from the files `db upgrade` wrote (unchanged when absent)."""
    update: dict[str, SecretStr] = {}
    for name, file_name in (("secret_key", SECRET_KEY_FILE), ("audit_key", AUDIT_KEY_FILE)):
        if getattr(settings, name) is None:
            stored = read_key(settings.key_dir / file_name)
            if stored is not None:
                update[name] = SecretStr(stored)
    return settings.model_copy(update=update) if update else settings


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
        settings = Settings(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        raise Invalid(f"bad setting {where}: {first['msg']}") from exc
    return with_stored_keys(settings)
