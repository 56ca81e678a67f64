"""A running `schoolgate radius serve` on free loopback ports, and clients to talk to it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
from pyrad.client import Client, Timeout
from pyrad.packet import AccessRequest, AccountingRequest, Packet, StatusServer

from radius import codec
from tests.conftest import SCHOOLGATE
from tests.helpers import free_udp_port

SECRET = b"testing123"


@dataclass
class RadiusServer:
    """A server subprocess; `stop()` sends SIGTERM and returns what it logged."""

    process: subprocess.Popen[str]
    auth_port: int
    acct_port: int
    secret: bytes
    db_url: str
    log_path: Path
    _stopped: str | None = field(default=None)

    def client(self, secret: bytes | None = None, timeout: float = 2.0, retries: int = 3) -> Client:
        return Client(
            server="127.0.0.1",
            authport=self.auth_port,
            acctport=self.acct_port,
            secret=secret or self.secret,
            dict=codec.load_dictionary(),
            retries=retries,
            timeout=timeout,
            enforce_ma=True,
        )

    def stop(self) -> str:
        if self._stopped is None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self._stopped = self.log_path.read_text()
        return self._stopped


def status_ok(port: int, secret: bytes = SECRET, timeout: float = 0.3) -> bool:
    """Send one Status-Server; True when a verified answer comes back."""
    packet = codec.encode_request(codec.STATUS_SERVER, 1, b"", secret)
    return exchange(packet, port, timeout=timeout) is not None


def exchange(
    packet: bytes, port: int, *, timeout: float = 1.0, source: str = "127.0.0.1"
) -> bytes | None:
    """Send raw bytes from `source`; the raw reply or None on timeout."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(timeout)
        sock.sendto(packet, ("127.0.0.1", port))
        try:
            return sock.recv(4096)
        except TimeoutError:
            return None


def start_server(
    db_url: str,
    tmp_path: Path,
    *extra: str,
    workers: int = 1,
    env: dict[str, str] | None = None,
    ports: tuple[int, int] | None = None,
) -> RadiusServer:
    if ports is None:
        auth_port, acct_port = free_udp_port(), free_udp_port()
        while acct_port == auth_port:
            acct_port = free_udp_port()
    else:
        auth_port, acct_port = ports
    log_path = tmp_path / f"radius-{auth_port}.log"
    number = 1
    while log_path.exists():  # a second server on the same ports
        number += 1
        log_path = tmp_path / f"radius-{auth_port}-{number}.log"
    env = {
        **os.environ,
        "SCHOOLGATE_DATABASE_URL": db_url,
        "SCHOOLGATE_RADIUS_SNAPSHOT_POLL_SECONDS": "0.2",
        "SCHOOLGATE_RADIUS_LOG_BATCH_SECONDS": "0.1",
        **(env or {}),
    }
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                *SCHOOLGATE,
                "radius",
                "serve",
                "--host",
                "127.0.0.1",
                "--auth-port",
                str(auth_port),
                "--acct-port",
                str(acct_port),
                "--workers",
                str(workers),
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=tmp_path,
        )
    server = RadiusServer(process, auth_port, acct_port, SECRET, db_url, log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"radius serve exited {process.returncode}:\n{server.stop()}")
        if status_ok(auth_port) and status_ok(acct_port):
            return server
        time.sleep(0.1)
    output = server.stop()
    raise AssertionError(f"radius serve did not answer Status-Server in 30 s:\n{output}")


@pytest.fixture
def radius_server(westgate: SimpleNamespace, tmp_path: Path) -> Iterator[RadiusServer]:
    """`schoolgate radius serve` against the seeded Westgate database."""
    server = start_server(westgate.db_url, tmp_path)
    yield server
    server.stop()


def mab_request(
    client: Client,
    mac: str,
    *,
    style: str = "bare",
    nas_identifier: str | None = None,
    called_station_id: str | None = None,
) -> Packet:
    """An Access-Request as a controller doing MAC authentication builds it."""
    from service.mac import format_mac

    request = client.CreateAuthPacket(code=AccessRequest, message_authenticator=True)
    request["User-Name"] = format_mac(mac, style)
    request["User-Password"] = request.PwCrypt(format_mac(mac, style))
    request["Calling-Station-Id"] = format_mac(mac, "hyphen-upper")
    request["Service-Type"] = "Call-Check"
    request["NAS-Port-Type"] = "Wireless-802.11"
    if nas_identifier:
        request["NAS-Identifier"] = nas_identifier
    if called_station_id:
        request["Called-Station-Id"] = called_station_id
    return request


def pap_request(client: Client, username: str, password: str, mac: str | None = None) -> Packet:
    request = client.CreateAuthPacket(code=AccessRequest, message_authenticator=True)
    request["User-Name"] = username
    request["User-Password"] = request.PwCrypt(password)
    request["Service-Type"] = "Framed-User"
    request["NAS-Port-Type"] = "Wireless-802.11"
    if mac:
        request["Calling-Station-Id"] = mac.replace(":", "-").upper()
    return request


def acct_request(client: Client, status: str, session_id: str, mac: str, **attrs: object) -> Packet:
    request = client.CreateAcctPacket(code=AccountingRequest)
    request["Acct-Status-Type"] = status
    request["Acct-Session-Id"] = session_id
    request["Calling-Station-Id"] = mac.replace(":", "-").upper()
    request["User-Name"] = mac.replace(":", "")
    request["NAS-Identifier"] = "AP-STAFFROOM-01"
    for name, value in attrs.items():
        request[name.replace("_", "-")] = value
    return request


def vlan_of(reply: Packet) -> str | None:
    values = reply.get("Tunnel-Private-Group-Id")
    return None if not values else str(values[0])


def status_server(client: Client, *, accounting: bool = False) -> Packet:
    """Status-Server (RFC 5997) to the auth port, or to the accounting port."""
    if accounting:
        request = client.CreateAcctPacket(code=StatusServer, message_authenticator=True)
    else:
        request = client.CreateAuthPacket(code=StatusServer)
    return client.SendPacket(request)


__all__ = ["SECRET", "RadiusServer", "Timeout", "exchange", "start_server"]
