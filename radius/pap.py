"""PAP: a person's own password, checked with argon2 against the snapshot's credentials.

argon2 is slow by design (tens of milliseconds and 64 MiB per check with argon2-cffi's
defaults), so the server runs checks in a thread pool, never on the event loop, and remembers
a success for `ttl` seconds: a keyed HMAC of the password, tied to the stored hash (a new
password or a changed hash misses the cache). Failures are never cached.

Repeated failures are throttled (`service/throttle.py`, the portal's throttle): per NAS +
Calling-Station-Id and per account name, exponential backoff. A throttled request is rejected
before any password check (argon2 or the success cache); an unknown or inactive account
costs the same argon2 work as a wrong password.

Two throttles, so the event loop never waits on the database: `throttle`, in the worker's
memory, is asked on the loop; `shared` (the `signin_failures` table every node and the portal
charge, issue 13) is asked in the argon2 thread, before argon2, so failures through another
RADIUS node count here too. While the database cannot be reached the shared one counts in
memory (`FallbackFailures`): PAP goes on answering from the snapshot.
"""

from __future__ import annotations

import hmac
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from radius.codec import RawPacket
from radius.snapshot import NasEntry
from service.facts import Credential
from service.people import verify_password
from service.signin import check_password
from service.throttle import Throttle


@dataclass(slots=True)
class PapJob:
    """A PAP request waiting for its argon2 check (run in a thread, then
    `Authorizer.finish_pap` on the loop)."""

    packet: RawPacket
    nas: NasEntry
    address: tuple[str, int]
    credential: Credential | None
    password: bytes
    mac: str | None
    username: str
    started_ns: int
    dedup_key: tuple[Any, ...]
    source: str = ""  # the throttle's source key: NAS + Calling-Station-Id
    throttled: bool = False  # refused by the shared throttle: no password was checked
    # When the request arrived (wall clock): the shared throttle charges the attempt at this
    # time, not when a busy argon2 thread gets to it, so its waits run in step with the
    # loop's in-memory ones.
    arrived: float = 0.0


class PapVerifier:
    def __init__(
        self,
        ttl: float = 300.0,
        throttle: Throttle | None = None,
        shared: Throttle | None = None,
    ) -> None:
        self._ttl = ttl
        self.throttle = throttle or Throttle()  # on the loop, in memory (monotonic clock)
        self.shared = shared  # in the argon2 thread, in the database (wall clock)
        self._key = os.urandom(32)
        self._ok: dict[str, tuple[str, bytes, float]] = {}
        self._lock = threading.Lock()
        self.argon2_checks = 0

    def _digest(self, password: bytes) -> bytes:
        return hmac.digest(self._key, password, "sha256")

    def cached(self, credential: Credential, password: bytes) -> bool:
        """True when this password was verified for this stored hash within `ttl`."""
        entry = self._ok.get(credential.username.lower())
        if entry is None:
            return False
        stored_hash, digest, expires = entry
        return (
            stored_hash == credential.password_hash
            and expires > time.monotonic()
            and hmac.compare_digest(digest, self._digest(password))
        )

    def verify(self, credential: Credential | None, password: bytes) -> bool:
        """argon2 verification (slow; call from a worker thread). No credential, an inactive
        one or one without a hash does the same argon2 work and fails."""
        if credential is None or not credential.active or not credential.password_hash:
            self.argon2_checks += 1
            check_password(None, password.decode("utf-8", "replace"))
            return False
        if self.cached(credential, password):
            return True
        self.argon2_checks += 1
        try:
            text = password.decode()
        except UnicodeDecodeError:
            return False
        ok = verify_password(credential.password_hash, text)
        if ok:
            with self._lock:
                if len(self._ok) > 100_000:
                    self._ok.clear()
                self._ok[credential.username.lower()] = (
                    credential.password_hash,
                    self._digest(password),
                    time.monotonic() + self._ttl,
                )
        return ok
