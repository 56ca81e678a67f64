"""The in-memory state the hot path answers from, and the thread that keeps it fresh.

`HotState` wraps the core's `service.facts.Snapshot` with what the packet handler needs
precomputed: NAS clients by source address (a dict for single addresses, a list of networks
most-specific first for CIDRs), each NAS's secret as bytes, its vendor profile and its site's
policy. `SnapshotKeeper` polls the change counter every `radius_snapshot_poll_seconds` (and,
on PostgreSQL, wakes on `LISTEN schoolgate_changes`). When it moves, the keeper reads what
changed from the change log (`service.facts.load_delta`) and patches the running state in
place (`patch_state`): a few rows instead of a rebuild that holds the GIL for hundreds of
milliseconds at a trust's size (`bench/snapshot.py`). It rebuilds the whole state off the
event loop, and swaps it in with one attribute assignment, at start, when a NAS client, site
or policy changed, and when the change log cannot say (pruned, too many changes at once).

Patching never lets the decision cache serve an answer made from old facts: the cache is
keyed by the device's facts-key number (`HotState.profiles`), and numbers are never reused
for other facts (`HotState.numbers` lives as long as the state), so a device whose facts
changed moves to its new facts' number and cannot reach the answers of its old one. While a
MAC is being patched its number is `UNCACHED` (its facts and number change in that order), and
the authorizer stores a fresh answer only when the MAC's number is still the one it looked up
(`radius/authorizer.py`): an answer decided from facts read mid-patch is never stored.

A keeper that reports for a RADIUS worker (`report_as_worker`) writes the change counter it
has loaded to `radius_workers` after each swap and on a heartbeat, from its own thread: the
CoA dispatcher waits for every live worker to have a change before it tells the NAS to ask
again (`service.enforcement.workers`).

Each successful poll proves the database reachable (`last_ok`); the server compares its age
with `radius_max_stale_seconds` and, past it, answers from `stale_state` instead: every device
as an unregistered one, or a refusal, as the site's `[radius] when_stale` says.
"""

from __future__ import annotations

import gc
import ipaddress
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from radius.codec import HmacKey, hmac_md5_key
from radius.vendors import VendorProfile, profile_for
from service.change_log import NOTIFY_CHANNEL
from service.db import Engine, SessionFactory, database_error_message
from service.enforcement.workers import forget_worker, report_worker
from service.facts import (
    NasInfo,
    Snapshot,
    SnapshotDelta,
    change_version,
    load_delta,
    load_snapshot,
)
from service.policy import SitePolicy, device_key

log = logging.getLogger("schoolgate.radius.snapshot")

_CIDR_MEMO_LIMIT = 10_000
RELOAD_SWITCH_INTERVAL = 0.001


@dataclass(frozen=True, slots=True)
class NasEntry:
    info: NasInfo
    secret: bytes
    profile: VendorProfile
    policy: SitePolicy | None  # None when the NAS's site has no policy loaded yet
    # True in a `stale_state` of a site whose policy says `when_stale = "reject"` (then
    # `policy` is None): the refusal says why.
    stale: bool = False
    # HMAC-MD5 keyed with the secret, copied for each Message-Authenticator.
    hmac_key: HmacKey = field(init=False, compare=False, repr=False)
    # The decision cache for this NAS (see `radius/decision_cache.py`); it lives
    # and dies with this snapshot version.
    decisions: dict[tuple[Any, ...], tuple[Any, ...]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "hmac_key", hmac_md5_key(self.secret))


# `HotState.profiles` value of a device whose answers the decision cache must not share (the
# engine gives it no facts key: it has exceptions granted).
UNCACHED = -1
UNKNOWN_DEVICE = 0  # a MAC the snapshot does not know


@dataclass
class HotState:
    snapshot: Snapshot
    exact: dict[str, NasEntry] = field(default_factory=dict)
    networks: list[tuple[Any, NasEntry]] = field(default_factory=list)
    _memo: dict[str, NasEntry | None] = field(default_factory=dict)
    # MAC -> number of its facts key (`service.policy.device_key`: devices with the same
    # number get the same answers; > 0, or `UNCACHED`). A MAC not here is not registered.
    profiles: dict[str, int] = field(default_factory=dict)
    # Facts key -> its number; kept for the state's life so a patch numbers new facts keys
    # without ever giving a number to other facts.
    numbers: dict[tuple[Any, ...], int] = field(default_factory=dict)

    @property
    def version(self) -> int:
        return self.snapshot.version

    def nas_for(self, address: str) -> NasEntry | None:
        """The NAS client a datagram from `address` belongs to, or None (drop it)."""
        entry = self.exact.get(address)
        if entry is not None or not self.networks:
            return entry
        memo = self._memo
        if address in memo:
            return memo[address]
        found: NasEntry | None = None
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            ip = None
        if ip is not None:
            mapped = getattr(ip, "ipv4_mapped", None)
            for network, candidate in self.networks:
                if ip in network or (mapped is not None and mapped in network):
                    found = candidate
                    break
        if len(memo) > _CIDR_MEMO_LIMIT:
            memo.clear()
        memo[address] = found
        return found


def build_state(snapshot: Snapshot) -> HotState:
    state = HotState(snapshot=snapshot)
    numbers = state.numbers
    profiles = state.profiles
    for mac, device in snapshot.devices.items():
        profile = device_key(device)
        if profile is None:
            profiles[mac] = UNCACHED
        else:
            number = numbers.get(profile)
            if number is None:
                number = numbers[profile] = len(numbers) + 1
            profiles[mac] = number
    cidrs: list[tuple[Any, NasEntry]] = []
    for nas in snapshot.nas_clients:
        secret = nas.secret.encode()
        entry = NasEntry(
            info=nas,
            secret=secret,
            profile=profile_for(nas.vendor),
            policy=snapshot.policies.get(nas.site_code),
        )
        network = nas.network
        if network.num_addresses == 1:
            address = str(network.network_address)
            state.exact.setdefault(address, entry)
            if network.version == 4:
                state.exact.setdefault(f"::ffff:{address}", entry)
        else:
            cidrs.append((network, entry))
    cidrs.sort(key=lambda item: item[0].prefixlen, reverse=True)
    state.networks = cidrs
    return state


def patch_state(state: HotState, delta: SnapshotDelta) -> None:
    """Apply `delta` to `state` in place, from the keeper's thread while the loop answers.

    Per MAC the loop sees the old facts or the new, never an answer cached for the old facts
    under the new (module docstring); per username, the old login or the new one.
    """
    snapshot = state.snapshot
    devices = snapshot.devices
    profiles = state.profiles
    numbers = state.numbers
    for mac, facts in delta.devices.items():
        if facts is None:
            profiles.pop(mac, None)  # first: an unknown MAC has the unknown device's answers
            devices.pop(mac, None)
            continue
        profiles[mac] = UNCACHED
        devices[mac] = facts
        key = device_key(facts)
        if key is not None:
            number = numbers.get(key)
            if number is None:
                number = numbers[key] = len(numbers) + 1
            profiles[mac] = number
    owners = snapshot.device_owner
    for mac, owner in delta.device_owner.items():
        if owner is None:
            owners.pop(mac, None)
        else:
            owners[mac] = owner
    if delta.person_ids:
        credentials = snapshot.credentials
        credentials.update(delta.credentials)  # first: a renamed login never disappears
        people = delta.person_ids
        for name in [
            name
            for name, credential in credentials.items()
            if credential.person_id in people and name not in delta.credentials
        ]:
            del credentials[name]
    snapshot.version = delta.version


def stale_state(state: HotState) -> HotState:
    """What the server answers from once the database has been unreachable too long: no
    device is known any more (each is answered as an unregistered one: the registration
    network, short Session-Timeout) and no PAP credential (a revoked password must not keep
    working); a NAS of a site whose policy says `when_stale = "reject"` refuses everything."""
    snapshot = replace(state.snapshot, devices={}, credentials={}, device_owner={})
    stale = build_state(snapshot)
    rejecting = {
        id(entry): replace(entry, policy=None, stale=True, decisions={})
        for entry in [*stale.exact.values(), *(e for _, e in stale.networks)]
        if entry.policy is not None and entry.policy.when_stale == "reject"
    }
    if rejecting:
        stale.exact = {a: rejecting.get(id(e), e) for a, e in stale.exact.items()}
        stale.networks = [(n, rejecting.get(id(e), e)) for n, e in stale.networks]
    return stale


def load_state(factory: SessionFactory) -> HotState:
    with factory() as session, session.begin():
        return build_state(load_snapshot(session))


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


class SnapshotKeeper:
    """Patches (or rebuilds) the state when the change counter moves; `on_swap` receives the
    state after each patch (the same object) or rebuild (a new one).

    Read by the server and its metrics: `loaded_version` (the change counter the state has
    reached), `last_ok` (monotonic time of the last successful poll), `reloads` (full
    builds) and `patches` (changes applied in place), `last_apply_ms` (the last one's time).
    """

    def __init__(
        self,
        engine: Engine,
        factory: SessionFactory,
        *,
        poll_seconds: float,
        on_swap: Callable[[HotState], None],
        current_version: int,
        state: HotState | None = None,
        report_as_worker: bool = False,
        heartbeat_seconds: float = 5.0,
    ) -> None:
        self._engine = engine
        self._factory = factory
        self._poll = max(0.05, poll_seconds)
        self._on_swap = on_swap
        self._version = current_version
        # The state to patch (the one `on_swap` last received); None: the next change rebuilds.
        self._state = state
        self.database_version = current_version  # the counter last read (for /metrics)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="snapshot-keeper", daemon=True)
        self.reloads = 0
        self.patches = 0
        self.last_apply_ms = 0.0
        # When the change counter was last read (time.monotonic()): the database was
        # reachable then, and the state current. Read by the server's loop.
        self.last_ok = time.monotonic()
        self.failing_since: float | None = None  # monotonic time of the first failed poll
        self._report = report_as_worker
        self._heartbeat = heartbeat_seconds
        self._node = socket.gethostname()
        self._reported_at: float | None = None  # monotonic time of the last report written
        self._report_failing = False

    def start(self) -> None:
        self.report(force=True)  # before the first packet: the dispatcher knows this worker
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self._report and self._reported_at is not None:
            try:
                with self._factory() as session, session.begin():
                    forget_worker(session=session, node=self._node, pid=os.getpid())
            except Exception as exc:  # noqa: BLE001 - stopping: its heartbeat ages out anyway
                log.warning("could not remove this worker's report (%s)", _first_line(exc))

    @property
    def loaded_version(self) -> int:
        """The change counter value the state answering now has reached."""
        return self._version

    def check_now(self) -> bool:
        """Patch or reload if the counter moved; True when the state changed."""
        with self._factory() as session:
            version = change_version(session)
            self.database_version = version
            if version == self._version:
                session.rollback()
                self._reached()
                self.report(force=False)
                return False
            if self._state is not None and self._patch(session):
                return True
        self._rebuild()
        return True

    def _patch(self, session: Any) -> bool:
        """Apply what changed in place; False when the change log says to rebuild."""
        state = self._state
        assert state is not None
        started = time.perf_counter()
        delta = load_delta(session=session, snapshot=state.snapshot)
        session.rollback()
        if delta is None:
            return False
        patch_state(state, delta)
        self._version = state.version
        self.last_apply_ms = (time.perf_counter() - started) * 1000
        self._on_swap(state)
        self._reached()
        self.report(force=True)
        self.patches += 1
        log.debug(
            "snapshot %d patched in %.1f ms: %d devices, %d people",
            state.version,
            self.last_apply_ms,
            len(delta.devices),
            len(delta.person_ids),
        )
        return True

    def _rebuild(self) -> None:
        started = time.perf_counter()
        # Building the state is a few hundred milliseconds of Python (30,000 devices) and the
        # event loop waits for the GIL meanwhile: whenever the loop makes a system call, this
        # thread takes the GIL and keeps it for the switch interval. Shorter while building
        # (at Python's 5 ms, 2,000 requests/s with a reload every second measured a p99 of
        # 9-42 ms; at 1 ms, 7-13 ms); not always, as it costs throughput under full load.
        # No automatic collection meanwhile either: tens of thousands of new objects would set
        # off collections that hold the GIL for milliseconds each; the server freezes the new
        # state out of the collector's reach once it is swapped in (building it leaves no
        # cyclic garbage).
        interval = sys.getswitchinterval()
        collecting = gc.isenabled()
        sys.setswitchinterval(min(interval, RELOAD_SWITCH_INTERVAL))
        if collecting:
            gc.disable()
        try:
            state = load_state(self._factory)
        finally:
            if collecting:
                gc.enable()
            sys.setswitchinterval(interval)
        self._version = state.version
        self._state = state
        self.last_apply_ms = (time.perf_counter() - started) * 1000
        self._on_swap(state)
        self._reached()
        self.report(force=True)
        self.reloads += 1
        log.info(
            "snapshot %d loaded in %.0f ms: %d devices, %d NAS clients, %d sites",
            state.version,
            self.last_apply_ms,
            len(state.snapshot.devices),
            len(state.snapshot.nas_clients),
            len(state.snapshot.policies),
        )

    def report(self, *, force: bool) -> None:
        """Write the loaded version to `radius_workers` (after a swap, or when the heartbeat is
        due). The keeper's thread only: the packet path never waits for it. A failure is
        logged once; the dispatcher stops waiting for a worker whose heartbeat ages out."""
        if not self._report:
            return
        started = time.monotonic()
        if (
            not force
            and self._reported_at is not None
            and started - self._reported_at < self._heartbeat
        ):
            return
        try:
            with self._factory() as session, session.begin():
                report_worker(
                    session=session,
                    node=self._node,
                    pid=os.getpid(),
                    loaded_version=self._version,
                    now=datetime.now(UTC),
                )
        except Exception as exc:  # noqa: BLE001 - a report lost is a CoA sent after the bound
            if not self._report_failing:
                log.warning("could not report snapshot %d (%s)", self._version, _first_line(exc))
            self._report_failing = True
            return
        if self._report_failing:
            log.warning("reporting the loaded snapshot again (%d)", self._version)
        self._report_failing = False
        self._reported_at = started

    def _reached(self) -> None:
        self.last_ok = time.monotonic()
        if self.failing_since is not None:
            log.warning(
                "database reachable again after %.0f s; snapshot %d",
                self.last_ok - self.failing_since,
                self._version,
            )
            self.failing_since = None

    def _failed(self, exc: Exception) -> None:
        """One line when the database stops answering, none while it stays away (the
        server logs when the snapshot grows too old; `_reached` when it is back)."""
        if self.failing_since is None:
            self.failing_since = time.monotonic()
            reason = database_error_message(exc)
            log.error(
                "snapshot reload failed (%s); answering from snapshot %d",
                reason or _first_line(exc),
                self._version,
                exc_info=reason is None,  # not the database: a bug, worth its traceback once
            )

    def _run(self) -> None:
        postgres = self._engine.dialect.name == "postgresql"
        listener = self._listen() if postgres else None
        try:
            while not self._stop.is_set():
                was_failing = self.failing_since is not None
                try:
                    self.check_now()
                except Exception as exc:  # noqa: BLE001 - the loop boundary: keep the old state
                    self._failed(exc)
                if postgres and listener is None and was_failing and self.failing_since is None:
                    listener = self._listen()  # back: wake on changes again
                if listener is not None:
                    listener = self._wait_notify(listener)
                else:
                    self._stop.wait(self._poll)
        finally:
            if listener is not None:
                listener.close()

    def _listen(self) -> Any:
        """A psycopg connection LISTENing on the change channel, or None (then poll only)."""
        try:
            import psycopg

            url = self._engine.url.set(drivername="postgresql")
            conn = psycopg.connect(url.render_as_string(hide_password=False), autocommit=True)
            conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            return conn
        except Exception as exc:  # noqa: BLE001 - no LISTEN: the poll still catches every change
            log.warning("cannot LISTEN on %s (%s); polling only", NOTIFY_CHANNEL, _first_line(exc))
            return None

    def _wait_notify(self, conn: Any) -> Any:
        try:
            for _ in conn.notifies(timeout=self._poll, stop_after=1):
                break
            return conn
        except Exception as exc:  # noqa: BLE001 - a lost connection; the poll reports the rest
            log.warning("LISTEN connection lost (%s); polling", _first_line(exc))
            conn.close()
            self._stop.wait(self._poll)
            return None
