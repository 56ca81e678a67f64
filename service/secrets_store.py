"""Keys the product relies on, kept outside the database: generated once, 0600, never a default.

`schoolgate db upgrade` (and `schoolgate demo`) writes two random keys into the state directory
(`Settings.key_dir`: `SCHOOLGATE_STATE_DIR`, by default the SQLite file's directory, else the
working directory), each readable only by the user who ran it (the service user):

- `secret.key` signs the portal's sign-in tickets and CSRF tokens (`SCHOOLGATE_SECRET_KEY`);
- `audit.key` keys the audit chain's HMAC (`SCHOOLGATE_AUDIT_KEY`), so someone who can write
  to the database cannot rewrite the chain (service/audit.py).

`load_settings` reads them when the variables are unset. A server refuses to listen anywhere
but loopback with a key that is missing, published or short (`check_serving_keys`).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from service.errors import Invalid

if TYPE_CHECKING:
    from service.config import Settings

SECRET_KEY_FILE = "secret.key"  # noqa: S105 - a file name, not a secret
AUDIT_KEY_FILE = "audit.key"
ANCHOR_FILE = "audit-anchor.log"
MIN_KEY_LENGTH = 32
# Values found in documentation, examples and older releases: never a key.
PUBLISHED_KEYS = frozenset(
    {"change-me", "changeme", "change_me", "secret", "password", "schoolgate", "testing123"}
)
KEY_FILE_MODE = 0o600


def key_weakness(value: str) -> str | None:
    """Why `value` is no key (None: it will do)."""
    if value.strip().lower() in PUBLISHED_KEYS:
        return "a published default"
    if not value.strip():
        return "empty"
    if len(value) < MIN_KEY_LENGTH:
        return f"only {len(value)} characters long"
    return None


def read_key(path: Path) -> str | None:
    """The key stored in `path`, or None when there is no such file.

    A key file that other users can read is refused: whoever read it can forge what it signs.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise Invalid(f"cannot read key file {path}: {exc.strerror}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise Invalid(
            f"key file {path} is readable by other users (mode {stat.S_IMODE(mode):o}): "
            f"chmod 600 {path}"
        )
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise Invalid(f"cannot read key file {path}: {exc}") from exc
    if not value:
        raise Invalid(f"key file {path} is empty: delete it and run `schoolgate db upgrade`")
    return value


def write_new_key(path: Path) -> bool:
    """Create `path` (0600 from the start) holding a fresh random key; False when it exists."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
    except FileExistsError:
        return False
    except OSError as exc:
        raise Invalid(f"cannot create key file {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(secrets.token_urlsafe(48) + "\n")
    return True


def ensure_keys(settings: Settings) -> list[Path]:
    """Generate the keys not set in the environment and not stored yet; the files created."""
    created = []
    for value, file_name in (
        (settings.secret_key, SECRET_KEY_FILE),
        (settings.audit_key, AUDIT_KEY_FILE),
    ):
        path = settings.key_dir / file_name
        if value is None and write_new_key(path):
            created.append(path)
    return created


@dataclass(frozen=True, slots=True)
class KeyProblem:
    variable: str  # SCHOOLGATE_SECRET_KEY
    file: Path
    why: str  # "not set", "a published default", ...

    def fix(self) -> str:
        return (
            f"run `schoolgate db upgrade` to generate {self.file}, "
            f"or set {self.variable} to {MIN_KEY_LENGTH}+ random characters"
        )


def weak_keys(settings: Settings) -> list[KeyProblem]:
    """The keys a server relies on that are missing or weak."""
    problems = []
    for name, file_name in (("secret_key", SECRET_KEY_FILE), ("audit_key", AUDIT_KEY_FILE)):
        value = getattr(settings, name)
        why = "not set" if value is None else key_weakness(value.get_secret_value())
        if why:
            problems.append(
                KeyProblem(f"SCHOOLGATE_{name.upper()}", settings.key_dir / file_name, why)
            )
    return problems


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_serving_keys(settings: Settings, host: str) -> list[str]:
    """Refuse (Invalid, one line) to serve on `host` with a missing or weak key unless `host` is
    loopback outside production; the warnings to print when it is."""
    problems = weak_keys(settings)
    if not problems:
        return []
    first = problems[0]
    if settings.environment == "production" or not is_loopback(host):
        where = "in production" if settings.environment == "production" else f"on {host}"
        raise Invalid(f"refusing to serve {where}: {first.variable} is {first.why}; {first.fix()}")
    return [
        f"warning: {p.variable} is {p.why}; serving on loopback ({host}) only" for p in problems
    ]
