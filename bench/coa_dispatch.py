"""Benchmark: queue and send N Disconnect-Requests to a local ACKing NAS.

    /work/venv/bin/python bench/coa_dispatch.py [N]

Prints the time of `watch()` per device change and of the dispatcher for the whole batch
(SQLite file database, NAS on loopback answering Disconnect-ACK).
"""

from __future__ import annotations

import hashlib
import socket
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from radius import codec
from radius.coa import UdpCoaSender
from service.config import load_settings
from service.db import make_engine, make_session_factory, transaction, upgrade
from service.demo import seed_demo_school
from service.devices import add_device, report_lost
from service.enforcement import drain
from service.models import AccountingSession, NasClient


def acking_nas(secret: bytes) -> tuple[int, threading.Event]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            head = bytes((codec.DISCONNECT_ACK, data[1])) + (20).to_bytes(2, "big")
            auth = hashlib.md5(head + data[4:20] + secret).digest()
            sock.sendto(head + auth, peer)
        sock.close()

    threading.Thread(target=serve, daemon=True).start()
    return sock.getsockname()[1], stop


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        upgrade(url)
        factory = make_session_factory(make_engine(url))
        port, stop = acking_nas(b"testing123")
        macs = [f"02:00:00:01:{i // 256:02x}:{i % 256:02x}" for i in range(count)]
        with transaction(factory) as session:
            seed_demo_school(session, actor="bench")
            nas = session.query(NasClient).one()
            nas.coa_port = port
            now = datetime.now(UTC)
            for i, mac in enumerate(macs):
                add_device(
                    session,
                    mac=mac,
                    site_code="westgate",
                    device_class="school_single",
                    actor="bench",
                )
                session.add(
                    AccountingSession(
                        nas_id=nas.id,
                        nas_ip="127.0.0.1",
                        site_code="westgate",
                        mac=mac,
                        acct_session_id=f"B{i}",
                        started_at=now,
                        updated_at=now,
                    )
                )
        started = time.perf_counter()
        for mac in macs:
            with transaction(factory) as session:
                report_lost(session, mac=mac, reported_by="bench", actor="bench")
        changes = time.perf_counter() - started
        started = time.perf_counter()
        drain(
            session_factory=factory,
            settings=load_settings(None, coa_timeout_seconds=1.0),
            sender=UdpCoaSender(),
            limit=120,
        )
        sent = time.perf_counter() - started
        stop.set()
        print(f"{count} devices lost, one transaction each: {changes * 1000 / count:.2f} ms/change")
        print(f"dispatcher: {count} Disconnect-Request/ACK in {sent:.2f} s ({count / sent:.0f}/s)")


if __name__ == "__main__":
    main()
