"""Issue 11, items 1 and 11: no secret has a default, keys live outside the database, NAS
secrets need not pass through argv, and the SQLite file is private.

Through the real `schoolgate` command and a real portal over HTTP: a sign-in ticket forged with
the old default key `change-me` is refused by a portal set up with `db upgrade`, and no server
listens beyond loopback with a missing or published key.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import stat
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func
from sqlalchemy import select as sql_select

from portal.tokens import Signer
from service.db import make_engine, make_session_factory, transaction
from service.demo import UNKNOWN_DEVICE
from service.models import AccountingSession, Device, NasClient, Person, utcnow
from tests.conftest import SCHOOLGATE
from tests.helpers import free_tcp_port, wait_for_tcp

STRONG = "k" * 40  # long enough, not published: what an admin would put in the variable


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a new install: no SCHOOLGATE_* left over from the test runner."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHOOLGATE_")}
    return {**env, "SCHOOLGATE_ACTOR": "tester", "COLUMNS": "200", **extra}


def schoolgate(
    cwd: Path, *args: str, input: str | None = None, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SCHOOLGATE, *args],
        cwd=cwd,
        env=clean_env(**env),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------- item 1: keys
def test_db_upgrade_generates_private_keys_once_and_they_are_used(tmp_path: Path) -> None:
    first = ok(schoolgate(tmp_path, "db", "upgrade"))
    assert f"generated {tmp_path / 'secret.key'} (mode 600)" in first.stdout
    keys = {name: tmp_path / name for name in ("secret.key", "audit.key")}
    values = {}
    for name, path in keys.items():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
        values[name] = path.read_text().strip()
        assert len(values[name]) >= 32
    assert values["secret.key"] != values["audit.key"]
    # a second upgrade keeps them (tickets and the chain stay valid)
    second = ok(schoolgate(tmp_path, "db", "upgrade"))
    assert "generated" not in second.stdout
    assert {n: p.read_text().strip() for n, p in keys.items()} == values


def test_a_key_set_in_the_environment_is_not_written_to_disk(tmp_path: Path) -> None:
    ok(schoolgate(tmp_path, "db", "upgrade", SCHOOLGATE_SECRET_KEY=STRONG))
    assert not (tmp_path / "secret.key").exists()
    assert (tmp_path / "audit.key").exists()


def test_a_key_file_other_users_can_read_is_refused(tmp_path: Path) -> None:
    ok(schoolgate(tmp_path, "db", "upgrade"))
    (tmp_path / "secret.key").chmod(0o644)
    one_line_error(
        schoolgate(tmp_path, "site", "list"), "secret.key is readable by other users", "chmod 600"
    )


def test_the_state_directory_holds_the_keys(tmp_path: Path) -> None:
    state = tmp_path / "state"
    ok(schoolgate(tmp_path, "db", "upgrade", SCHOOLGATE_STATE_DIR=str(state)))
    assert stat.S_IMODE((state / "secret.key").stat().st_mode) == 0o600
    assert not (tmp_path / "secret.key").exists()


@pytest.mark.parametrize(
    ("command", "env", "fragments"),
    [
        # the default the product used to ship with
        (
            ("portal", "serve", "--host", "0.0.0.0"),
            {"SCHOOLGATE_SECRET_KEY": "change-me", "SCHOOLGATE_AUDIT_KEY": STRONG},
            ("refusing to serve on 0.0.0.0", "SCHOOLGATE_SECRET_KEY is a published default"),
        ),
        # a fresh directory where `db upgrade` never ran: no key at all
        (
            ("portal", "serve", "--host", "0.0.0.0"),
            {},
            ("SCHOOLGATE_SECRET_KEY is not set", "schoolgate db upgrade"),
        ),
        (
            ("portal", "serve", "--host", "10.0.0.1"),
            {"SCHOOLGATE_SECRET_KEY": "short-key", "SCHOOLGATE_AUDIT_KEY": STRONG},
            ("SCHOOLGATE_SECRET_KEY is only 9 characters long",),
        ),
        # the audit key too
        (
            ("portal", "serve", "--host", "0.0.0.0"),
            {"SCHOOLGATE_SECRET_KEY": STRONG, "SCHOOLGATE_AUDIT_KEY": "change-me"},
            ("SCHOOLGATE_AUDIT_KEY is a published default",),
        ),
        # the all-in-one server, before it starts RADIUS
        (
            ("serve", "--host", "0.0.0.0"),
            {"SCHOOLGATE_SECRET_KEY": "change-me"},
            ("refusing to serve on 0.0.0.0", "SCHOOLGATE_SECRET_KEY is a published default"),
        ),
    ],
)
def test_no_server_listens_beyond_loopback_with_a_weak_key(
    tmp_path: Path, command: tuple[str, ...], env: dict[str, str], fragments: tuple[str, ...]
) -> None:
    port = str(free_tcp_port())
    extra = ("--port", port) if command[0] == "portal" else ("--portal-port", port)
    result = schoolgate(tmp_path, *command, *extra, timeout=30, **env)
    one_line_error(result, *fragments)


@pytest.fixture
def running_portal(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A default install from the README: `db upgrade`, the demo school, `portal serve` on
    loopback; the school's unregistered device is at 127.0.0.1 (as accounting would say)."""
    ok(schoolgate(tmp_path, "db", "upgrade"))
    ok(schoolgate(tmp_path, "demo"))
    # Westgate gives staff devices no network, so the portal refuses every staff registration
    # there; the control below needs a school that admits them (St Andrew's way: internet).
    policy = tmp_path / "westgate-staff-internet.toml"
    westgate = Path(__file__).resolve().parents[2] / "deploy/policies/westgate.toml"
    text = westgate.read_text()
    assert 'staff_owned = "none"' in text
    policy.write_text(text.replace('staff_owned = "none"', 'staff_owned = "internet"', 1))
    ok(schoolgate(tmp_path, "policy", "load", str(policy)))
    url = f"sqlite:///{tmp_path / 'schoolgate.db'}"
    engine = make_engine(url)
    with transaction(make_session_factory(engine)) as session:
        session.add(
            AccountingSession(
                nas_ip="127.0.0.1",
                nas_identifier="demo-controller",
                site_code="westgate",
                mac=UNKNOWN_DEVICE,
                framed_ip="127.0.0.1",
                acct_session_id="s-forged",
                called_station_id="demo-controller",
                started_at=utcnow(),
                updated_at=utcnow(),
            )
        )
    engine.dispose()
    port = free_tcp_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "portal.log").open("w")
    process = subprocess.Popen(
        [*SCHOOLGATE, "portal", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path,
        env=clean_env(SCHOOLGATE_PORTAL_URL=base + "/"),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_tcp(port, timeout=60)
        yield base, tmp_path
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _register(base: str, signer: Signer, person_id: int) -> httpx.Response:
    """Register the unregistered device in the staff member's name, as the BYOD form would."""
    return httpx.post(
        f"{base}/staff/register",
        data={
            "ticket": signer.ticket(person_id, UNKNOWN_DEVICE),
            "csrf": signer.csrf("staff-byod", UNKNOWN_DEVICE),
            "device_name": "not Jo's phone",
            "agree": "yes",
            "typed_name": "Jo Smith",
        },
        timeout=10,
    )


def test_a_ticket_forged_with_the_old_default_key_is_refused(
    running_portal: tuple[str, Path],
) -> None:
    base, directory = running_portal
    engine = make_engine(f"sqlite:///{directory / 'schoolgate.db'}")
    factory = make_session_factory(engine)
    with factory() as session:
        staff_id = session.scalar(sql_select(Person.id).where(Person.username == "jsmith"))
    assert staff_id is not None

    def registered() -> int:
        with factory() as session:
            count = session.scalar(
                sql_select(func.count()).select_from(Device).where(Device.mac == UNKNOWN_DEVICE)
            )
        return int(count or 0)

    forged = _register(base, Signer("change-me"), staff_id)
    assert forged.status_code == 400
    assert "not valid" in forged.text
    assert registered() == 0
    # the control: the same request signed with the key `db upgrade` generated registers
    genuine = _register(base, Signer((directory / "secret.key").read_text().strip()), staff_id)
    assert genuine.status_code == 303, genuine.text
    assert registered() == 1
    engine.dispose()


def test_loopback_with_a_weak_key_serves_with_one_warning(tmp_path: Path) -> None:
    ok(schoolgate(tmp_path, "db", "upgrade"))
    port = free_tcp_port()
    log_path = tmp_path / "portal.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [*SCHOOLGATE, "portal", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path,
            env=clean_env(
                SCHOOLGATE_SECRET_KEY="change-me", SCHOOLGATE_PORTAL_URL=f"http://127.0.0.1:{port}/"
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_tcp(port, timeout=60)
            assert httpx.get(f"http://127.0.0.1:{port}/about", timeout=10).status_code == 200
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=15)
    warnings = [line for line in log_path.read_text().splitlines() if "warning:" in line]
    assert warnings == [
        "warning: SCHOOLGATE_SECRET_KEY is a published default; serving on loopback "
        "(127.0.0.1) only"
    ]


# ---------------------------------------------------------------- item 11: NAS secret, SQLite
def test_the_sqlite_file_is_created_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        ok(schoolgate(tmp_path, "db", "upgrade"))
    finally:
        os.umask(old)
    for path in tmp_path.glob("schoolgate.db*"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


@pytest.fixture
def school(tmp_path: Path) -> Path:
    ok(schoolgate(tmp_path, "demo"))
    return tmp_path


def stored_secret(directory: Path, name: str) -> str | None:
    engine = make_engine(f"sqlite:///{directory / 'schoolgate.db'}")
    with make_session_factory(engine)() as session:
        secret = session.scalar(sql_select(NasClient.secret).where(NasClient.name == name))
    engine.dispose()
    return secret


NAS = ("nas", "add", "--site", "westgate", "--address")


def test_nas_secret_from_a_file(school: Path) -> None:
    secret_file = school / "nas.secret"
    secret_file.write_text("from-a-file-secret\n")
    ok(schoolgate(school, *NAS, "10.1.0.1", "--name", "f", "--secret-file", str(secret_file)))
    assert stored_secret(school, "f") == "from-a-file-secret"


def test_nas_secret_from_stdin(school: Path) -> None:
    ok(schoolgate(school, *NAS, "10.1.0.2", "--name", "s", "--secret", "-", input="piped-secret\n"))
    assert stored_secret(school, "s") == "piped-secret"


def test_nas_secret_mistakes_are_one_line(school: Path) -> None:
    one_line_error(schoolgate(school, *NAS, "10.1.0.3", "--name", "n"), "no shared secret")
    one_line_error(
        schoolgate(school, *NAS, "10.1.0.3", "--name", "n", "--secret-file", "/nonexistent"),
        "cannot read /nonexistent",
    )
    two = school / "two-lines"
    two.write_text("one-secret\nanother-one\n")
    one_line_error(
        schoolgate(school, *NAS, "10.1.0.3", "--name", "n", "--secret-file", str(two)),
        "more than one line",
    )
    one_line_error(
        schoolgate(school, *NAS, "10.1.0.3", "--name", "n", "--secret", "-", input="\n"),
        "at least 6 characters",
    )
    assert stored_secret(school, "n") is None


def _read_until(fd: int, wanted: str, timeout: float = 30) -> str:
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted.encode() not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {wanted!r} in {seen!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                chunk = os.read(fd, 1024)
            except OSError:  # the terminal closed
                break
            if not chunk:
                break
            seen += chunk
    return seen.decode(errors="replace")


def test_nas_secret_asked_on_a_terminal(school: Path) -> None:
    """No --secret on a terminal: asked twice, not echoed, never in argv."""
    master, slave = os.openpty()

    def controlling_terminal() -> None:
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

    process = subprocess.Popen(
        [*SCHOOLGATE, *NAS, "10.1.0.4", "--name", "t"],
        cwd=school,
        env=clean_env(),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        preexec_fn=controlling_terminal,  # noqa: PLW1509 - only setsid and the terminal
    )
    os.close(slave)
    try:
        # the space after the colon comes from getpass once echo is off (click prints the rest)
        _read_until(master, "RADIUS shared secret: ")
        os.write(master, b"typed-secret\n")
        _read_until(master, "confirmation: ")
        os.write(master, b"typed-secret\n")
        rest = _read_until(master, "added NAS t")
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        os.close(master)
    assert "typed-secret" not in rest  # not echoed
    assert stored_secret(school, "t") == "typed-secret"
