"""The database goes away for 30 s under 500 requests a second: nothing acknowledged is lost.

Between `schoolgate radius serve` (two workers) and PostgreSQL sits a TCP proxy that this test
cuts: every connection through it is closed and new ones are closed as soon as they open, as
when the database server stops; the shared server itself is never touched. Meanwhile a small
asyncio sender plays a NAS: MAB Access-Requests, one MAC each, and accounting sessions
(Start, Interim-Update, Stop), retransmitting unanswered accounting as a NAS does. Afterwards:
every accounting record the server acknowledged is in the database exactly once (and its
session shows it), and every answered Access-Request has its decision row, none twice.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from radius import codec
from service.db import make_engine, make_session_factory
from service.models import AccountingSession, DecisionRecord
from service.models.ledger import AccountingRecord
from tests.db_proxy import CuttableProxy, through
from tests.radius.conftest import SECRET, start_server

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

RATE = 500  # requests a second, half MAB and half accounting
BEFORE, OUTAGE, AFTER = 3.0, 30.0, 4.0
RETRANSMIT_SECONDS, TRIES = 2.0, 8


@dataclass
class Pending:
    data: bytes
    auth: bytes
    tries: int = 1
    sent_at: float = 0.0


@dataclass
class Nas:
    """The sending side: which packets were answered."""

    auth_port: int
    acct_port: int
    auth_answered: set[str] = field(default_factory=set)  # MACs
    auth_sent: int = 0
    acct_acked: set[tuple[str, int]] = field(default_factory=set)  # (session id, status)
    acct_sent: set[tuple[str, int]] = field(default_factory=set)
    octets: dict[str, int] = field(default_factory=dict)  # session id -> last octets sent


def _mac(n: int) -> str:
    return "02:5a:" + ":".join(f"{(n >> shift) & 255:02x}" for shift in (24, 16, 8, 0))


class _Port(asyncio.DatagramProtocol):
    def __init__(self, on_reply: object) -> None:
        self.on_reply = on_reply
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.DatagramTransport", transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.on_reply(self, data)  # type: ignore[operator]


async def play_nas(nas: Nas, proxy: CuttableProxy) -> None:
    """Send for BEFORE + OUTAGE + AFTER seconds at RATE, cutting the database in between;
    then keep retransmitting unanswered accounting until its tries run out."""
    loop = asyncio.get_running_loop()
    pending: dict[tuple[int, int], tuple[Pending, object]] = {}  # (port id, identifier)

    def on_reply(port: _Port, data: bytes) -> None:
        try:
            reply = codec.decode(data)
        except codec.PacketError:
            return
        entry = pending.get((id(port), reply.identifier))
        if entry is None:
            return
        request, what = entry
        if not codec.verify_response_authenticator(reply, request.auth, SECRET):
            return
        del pending[(id(port), reply.identifier)]
        if reply.code == codec.ACCOUNTING_RESPONSE:
            assert isinstance(what, tuple)
            nas.acct_acked.add(what)
        elif reply.code in (codec.ACCESS_ACCEPT, codec.ACCESS_REJECT):
            assert isinstance(what, str)
            nas.auth_answered.add(what)

    auth_ports: list[_Port] = []
    acct_ports: list[_Port] = []
    for ports, server_port in ((auth_ports, nas.auth_port), (acct_ports, nas.acct_port)):
        for _ in range(16):
            _, protocol = await loop.create_datagram_endpoint(
                lambda: _Port(on_reply), remote_addr=("127.0.0.1", server_port)
            )
            ports.append(protocol)
    next_id: dict[int, int] = {}

    def send(port: _Port, code: int, body: bytes, what: object) -> None:
        key_base = id(port)
        ident = next_id.get(key_base, 0)
        for _ in range(256):
            if (key_base, ident) not in pending:
                break
            ident = (ident + 1) % 256
        else:
            return  # every identifier of this port is waiting: skip, as a busy NAS would
        next_id[key_base] = (ident + 1) % 256
        data = codec.encode_request(code, ident, body, SECRET)
        request = Pending(data, data[4:20], sent_at=loop.time())
        pending[(key_base, ident)] = (request, what)
        assert port.transport is not None
        port.transport.sendto(data)

    nas_attrs = codec.attr_text(codec.NAS_IDENTIFIER, "demo-controller")
    start = loop.time()
    tick = 0.02
    sessions: list[tuple[float, str, int, int]] = []  # (due, session id, status, port index)
    n = 0
    cut = restored = False
    while (now := loop.time()) - start < BEFORE + OUTAGE + AFTER:
        elapsed = now - start
        if not cut and elapsed >= BEFORE:
            cut = True
            proxy.cut()
        if cut and not restored and elapsed >= BEFORE + OUTAGE:
            restored = True
            proxy.restore()
        while n < elapsed * RATE / 2:  # paced by the clock, whatever a tick costs
            n += 1
            mac = _mac(n)
            body = b"".join(
                (
                    codec.attr_text(codec.USER_NAME, mac.replace(":", "")),
                    codec.attr_text(codec.CALLING_STATION_ID, mac.replace(":", "-")),
                    codec.attr_int(codec.SERVICE_TYPE, codec.SERVICE_TYPE_CALL_CHECK),
                    nas_attrs,
                )
            )
            send(auth_ports[n % len(auth_ports)], codec.ACCESS_REQUEST, body, mac)
            nas.auth_sent += 1
            # Accounting at the same rate: a session every third MAB request, each of its
            # three records due one second apart (Start now, Interim, Stop).
            if n % 3 == 0:
                sid = f"s{n}"
                port = n % len(acct_ports)
                sessions.extend(
                    [(now, sid, codec.ACCT_START, port), (now + 1, sid, codec.ACCT_INTERIM, port)]
                )
                sessions.append((now + 2, sid, codec.ACCT_STOP, port))
        due = [s for s in sessions if s[0] <= now]
        sessions = [s for s in sessions if s[0] > now]
        for _, sid, status, port in due:
            octets = {codec.ACCT_START: 0, codec.ACCT_INTERIM: 1000, codec.ACCT_STOP: 5000}
            body = b"".join(
                (
                    codec.attr_int(codec.ACCT_STATUS_TYPE, status),
                    codec.attr_text(codec.ACCT_SESSION_ID, sid),
                    codec.attr_text(codec.USER_NAME, sid),
                    codec.attr_text(codec.CALLING_STATION_ID, _mac(int(sid[1:])).replace(":", "-")),
                    codec.attr_int(codec.ACCT_INPUT_OCTETS, octets[status]),
                    codec.attr_int(codec.ACCT_SESSION_TIME, {1: 0, 3: 1, 2: 2}[status]),
                    nas_attrs,
                )
            )
            send(acct_ports[port], codec.ACCOUNTING_REQUEST, body, (sid, status))
            nas.acct_sent.add((sid, status))
        # Retransmit unanswered accounting (the same octets), drop unanswered MAB.
        for key, (request, what) in list(pending.items()):
            if now - request.sent_at < RETRANSMIT_SECONDS:
                continue
            if isinstance(what, str) or request.tries >= TRIES:
                del pending[key]
                continue
            request.tries += 1
            request.sent_at = now
            port = next(p for p in acct_ports if id(p) == key[0])
            assert port.transport is not None
            port.transport.sendto(request.data)
        await asyncio.sleep(tick)
    deadline = loop.time() + 20
    while any(isinstance(w, tuple) for _, w in pending.values()) and loop.time() < deadline:
        await asyncio.sleep(0.2)
    for port in auth_ports + acct_ports:
        assert port.transport is not None
        port.transport.close()


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_database_outage_under_load_loses_nothing_acknowledged(
    westgate: SimpleNamespace, tmp_path: Path
) -> None:
    url = make_url(westgate.db_url)
    proxy = CuttableProxy((url.host or "127.0.0.1", url.port or 5432))
    server = start_server(
        through(westgate.db_url, proxy.port),
        tmp_path,
        workers=2,
        env={"SCHOOLGATE_STATE_DIR": str(tmp_path), "SCHOOLGATE_COA_ENABLED": "false"},
    )
    try:
        nas = Nas(server.auth_port, server.acct_port)
        asyncio.run(play_nas(nas, proxy))
        # Replay: the spool files empty once everything is in the database.
        spools = list((tmp_path / "spool").glob("*.spool"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(p.stat().st_size for p in spools):
            time.sleep(0.2)
        time.sleep(1.0)  # the decision log's last batch
    finally:
        output = server.stop()
        proxy.close()
    assert [p.name for p in spools if p.stat().st_size] == [], output
    assert any(p.name.endswith("-accounting.spool") for p in spools), output
    assert "spooled to" in output, output  # the outage really sent records to the spool

    engine = make_engine(westgate.db_url)
    try:
        with make_session_factory(engine)() as session:
            ledger = session.execute(
                select(AccountingRecord.acct_session_id, AccountingRecord.status)
            ).all()
            sessions = {
                row.acct_session_id: row for row in session.scalars(select(AccountingSession))
            }
            decided = session.scalars(
                select(DecisionRecord.mac).where(DecisionRecord.mac.like("02:5a:%"))
            ).all()
    finally:
        engine.dispose()

    # Accounting: every acknowledged record exactly once; nothing stored that was not sent.
    counts: dict[tuple[str, int], int] = {}
    for sid, status in ledger:
        counts[(sid, status)] = counts.get((sid, status), 0) + 1
    assert {k: v for k, v in counts.items() if v > 1} == {}
    missing = sorted(nas.acct_acked - set(counts))
    assert missing == [], f"{len(missing)} acknowledged records missing, e.g. {missing[:5]}"
    assert set(counts) <= nas.acct_sent
    assert len(nas.acct_acked) > 0.9 * len(nas.acct_sent), (len(nas.acct_acked), output)
    for sid, status in nas.acct_acked:  # and the sessions show them, once
        row = sessions[sid]
        if status == codec.ACCT_STOP:
            assert row.stopped_at is not None
            assert row.input_octets == 5000
        elif status == codec.ACCT_INTERIM:
            assert row.input_octets >= 1000

    # Decisions: every answered Access-Request has its row, none twice.
    per_mac: dict[str, int] = {}
    for mac in decided:
        per_mac[mac] = per_mac.get(mac, 0) + 1
    assert {m: c for m, c in per_mac.items() if c > 1} == {}
    unlogged = sorted(nas.auth_answered - set(per_mac))
    assert unlogged == [], f"{len(unlogged)} answers without a decision row, e.g. {unlogged[:5]}"
    assert len(nas.auth_answered) > 0.9 * nas.auth_sent, (len(nas.auth_answered), nas.auth_sent)
    assert "decisions_lost=0" in output, output
