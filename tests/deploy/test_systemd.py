"""deploy/systemd/: every unit passes `systemd-analyze verify`, carries the hardening the issue
asks for, and the commands the units run (ExecStart=, with their Environment=, EnvironmentFile=
and LoadCredential=) start and answer against a fresh SQLite database, the way systemd would
start them but for the test's paths and ports.

What `systemd-analyze verify` checks here: the syntax of every section, unknown or misspelt
keys and values it cannot parse (reported as warnings, so the test fails on any line about our
files), that ExecStart= names an executable that exists, that a timer has a valid OnCalendar=
and a unit to start, and the units they name. What it cannot: that the user `schoolgate`
exists, that the sandbox lets the program do its work (no systemd runs as PID 1 here to start
it), nor the credential and environment files' content; the last test covers those.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.stack import (
    DEPLOY,
    Ports,
    check_servers,
    has_metrics,
    run_all,
    run_once,
    seed_school,
    started,
    substitute,
    with_ports,
)

UNITS = DEPLOY / "systemd"
BINARY = "/opt/schoolgate/.venv/bin/schoolgate"
STATE = "/var/lib/schoolgate"
SERVICES = (
    "schoolgate-db-upgrade.service",
    "schoolgate-radius.service",
    "schoolgate-portal.service",
    "schoolgate-coa.service",
    "schoolgate-monitor@.service",
    "schoolgate-retention.service",
    "schoolgate-report.service",
)
TIMERS = ("schoolgate-retention.timer", "schoolgate-report.timer")
METRICS_PORTS = {
    "schoolgate-radius.service": "9812",
    "schoolgate-coa.service": "9813",
    "schoolgate-portal.service": "9814",
    "schoolgate-monitor@.service": "9815",
}

Unit = dict[str, list[tuple[str, str]]]


NICE_WRITERS = {"schoolgate-radius.service", "schoolgate-monitor@.service"}


def parse_unit(path: Path) -> Unit:
    """A unit file as systemd reads it: sections of (key, value), repeated keys kept."""
    unit: Unit = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            unit.setdefault(section, [])
            continue
        key, _, value = line.partition("=")
        unit[section].append((key.strip(), value.strip()))
    return unit


def values(unit: Unit, section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def one(unit: Unit, section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"{key}= appears {len(found)} times"
    return found[0]


def test_every_unit_file_is_there() -> None:
    present = {p.name for p in UNITS.iterdir() if p.suffix in (".service", ".timer")}
    assert present == set(SERVICES) | set(TIMERS)


def _verify(directory: Path, names: list[str]) -> tuple[int, list[str]]:
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *(str(directory / n) for n in names)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # Lines about other units on this machine (e.g. Debian's freeradius.service) are not ours.
    ours = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if str(directory) in line or any(n.split("@")[0] in line for n in names)
    ]
    return result.returncode, ours


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed (Debian package systemd)")
    # verify checks ExecStart= names an executable: point it at this checkout's command.
    executable = Path(sys.executable).parent / "schoolgate"
    assert executable.exists()
    for name in (*SERVICES, *TIMERS):
        text = (UNITS / name).read_text().replace(BINARY, str(executable))
        (tmp_path / name).write_text(text)
    # A template is verified as an instance (the interface), as `systemctl start` would.
    shutil.copy(
        tmp_path / "schoolgate-monitor@.service", tmp_path / "schoolgate-monitor@lo.service"
    )
    names = [n for n in (*SERVICES, *TIMERS) if n != "schoolgate-monitor@.service"]
    names.append("schoolgate-monitor@lo.service")
    code, lines = _verify(tmp_path, names)
    assert code == 0, lines
    assert lines == []
    # systemd's own exposure score (0 safe .. 10 exposed): at most 2.0 for every service.
    services = [str(tmp_path / n) for n in names if n.endswith(".service")]
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--threshold=20", *services],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    scores = [line for line in security.stdout.splitlines() if "Overall exposure" in line]
    assert security.returncode == 0, scores
    assert len(scores) == len(services)

    # The check bites: a misspelt hardening key is reported, a missing program fails.
    broken = (tmp_path / "schoolgate-portal.service").read_text()
    broken = broken.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes")
    broken = broken.replace(str(executable), "/nonexistent/schoolgate")
    (tmp_path / "schoolgate-broken.service").write_text(broken)
    code, lines = _verify(tmp_path, ["schoolgate-broken.service"])
    assert code != 0
    assert any("NoNewPrivilege" in line for line in lines), lines


@pytest.mark.parametrize("name", SERVICES)
def test_service_is_hardened(name: str) -> None:
    unit = parse_unit(UNITS / name)
    service = "Service"
    assert values(unit, service, "ExecStart"), "no ExecStart="
    assert all(v.startswith(BINARY + " ") for v in values(unit, service, "ExecStart"))
    expected = {
        "User": "schoolgate",
        "Group": "schoolgate",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ReadWritePaths": STATE,
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "EnvironmentFile": "/etc/schoolgate/schoolgate.env",
        "LoadCredential": "schoolgate.toml:/etc/schoolgate/schoolgate.toml",
        "WorkingDirectory": STATE,
    }
    for key, value in expected.items():
        assert one(unit, service, key) == value, key
    # The services with a writer process at niceness 5 (the decision log, the monitor's
    # writer) may lower their own priority, and nothing else of @resources.
    renice = ["setpriority"] if name in NICE_WRITERS else []
    assert values(unit, service, "SystemCallFilter") == [
        "@system-service",
        "~@privileged @resources",
        *renice,
    ]
    assert "SCHOOLGATE_CONFIG=%d/schoolgate.toml" in values(unit, service, "Environment")
    families = one(unit, service, "RestrictAddressFamilies").split()
    if name == "schoolgate-monitor@.service":
        assert one(unit, service, "CapabilityBoundingSet") == "CAP_NET_RAW CAP_NET_ADMIN"
        assert one(unit, service, "AmbientCapabilities") == "CAP_NET_RAW CAP_NET_ADMIN"
        assert "AF_PACKET" in families
    else:
        assert one(unit, service, "CapabilityBoundingSet") == ""
        assert one(unit, service, "AmbientCapabilities") == ""
        assert sorted(families) == ["AF_INET", "AF_INET6", "AF_UNIX"]
    if name in METRICS_PORTS:
        port = METRICS_PORTS[name]
        assert f"SCHOOLGATE_METRICS_PORT={port}" in values(unit, service, "Environment")
    if name != "schoolgate-db-upgrade.service":
        assert "schoolgate-db-upgrade.service" in one(unit, "Unit", "After").split()


def test_upgrade_runs_first_and_timers_run_daily_and_weekly() -> None:
    upgrade = parse_unit(UNITS / "schoolgate-db-upgrade.service")
    assert one(upgrade, "Service", "Type") == "oneshot"
    before = one(upgrade, "Unit", "Before").split()
    for name in ("radius", "portal", "coa"):
        unit = parse_unit(UNITS / f"schoolgate-{name}.service")
        assert one(unit, "Unit", "Requires") == "schoolgate-db-upgrade.service"
        assert f"schoolgate-{name}.service" in before
    radius = one(parse_unit(UNITS / "schoolgate-radius.service"), "Service", "ExecStart")
    assert "--no-coa" in radius.split()  # schoolgate-coa.service is the only dispatcher
    retention = parse_unit(UNITS / "schoolgate-retention.timer")
    assert one(retention, "Timer", "OnCalendar") == "*-*-* 03:15:00"
    assert one(retention, "Timer", "Unit") == "schoolgate-retention.service"
    report = parse_unit(UNITS / "schoolgate-report.timer")
    assert one(report, "Timer", "OnCalendar") == "Mon *-*-* 06:00:00"
    assert one(report, "Timer", "Unit") == "schoolgate-report.service"
    for timer in (retention, report):
        assert one(timer, "Timer", "Persistent") == "true"
        assert one(timer, "Install", "WantedBy") == "timers.target"


class Host:
    """The paths a unit names, moved under the test's directory."""

    def __init__(self, root: Path, database: Path) -> None:
        self.root = root
        self.state = root / "var-lib-schoolgate"
        self.state.mkdir(mode=0o700)
        self.credentials = root / "credentials"  # $CREDENTIALS_DIRECTORY (%d)
        self.credentials.mkdir(mode=0o700)
        self.config = self.credentials / "schoolgate.toml"
        # deploy/systemd/schoolgate.toml.example, with the test's SQLite file.
        example = (UNITS / "schoolgate.toml.example").read_text()
        line = f'database_url = "sqlite:///{STATE}/schoolgate.db"'
        assert line in example
        self.config.write_text(example.replace(line, f'database_url = "sqlite:///{database}"'))

    def path(self, value: str) -> str:
        return value.replace(STATE, str(self.state))

    def command(self, unit: Unit, exec_line: str, instance: str = "") -> list[str]:
        argv = shlex.split(exec_line.replace("%i", instance))
        assert argv[0] == BINARY
        return [self.path(a) for a in argv[1:]]

    def environment(self, unit: Unit, metrics_port: int | None) -> dict[str, str]:
        """Environment= then EnvironmentFile= (which wins, as in systemd), specifiers
        expanded; the file is deploy/systemd/schoolgate.env."""
        env: dict[str, str] = {}
        for line in values(unit, "Service", "Environment"):
            for item in shlex.split(line):
                key, _, value = item.partition("=")
                env[key] = value.replace("%d", str(self.credentials))
        assert one(unit, "Service", "EnvironmentFile") == "/etc/schoolgate/schoolgate.env"
        for raw in (UNITS / "schoolgate.env").read_text().splitlines():
            if raw.strip() and not raw.startswith("#"):
                key, _, value = raw.partition("=")
                env[key.strip()] = value.strip()
        env = {k: self.path(v) for k, v in env.items()}
        env["SCHOOLGATE_METRICS_PORT"] = str(metrics_port or 0)
        credential, source = one(unit, "Service", "LoadCredential").split(":")
        assert source == "/etc/schoolgate/schoolgate.toml"
        assert env["SCHOOLGATE_CONFIG"] == str(self.credentials / credential)
        base = {k: v for k, v in os.environ.items() if not k.startswith("SCHOOLGATE_")}
        return {**base, **env, "SCHOOLGATE_ACTOR": "systemd-test", "COLUMNS": "200"}


@pytest.mark.slow
def test_unit_commands_run(tmp_path: Path) -> None:
    """db-upgrade migrates a new SQLite file; radius, portal and coa answer their health
    checks; the monitor@lo captures (as root); the retention and report one-shots exit 0."""
    database = tmp_path / "schoolgate.db"
    host = Host(tmp_path, database)
    ports = Ports()
    units = {name: parse_unit(UNITS / name) for name in SERVICES}

    def env(name: str) -> dict[str, str]:
        role = name.removeprefix("schoolgate-").split(".")[0].split("@")[0]
        return host.environment(units[name], ports.metrics.get(role))

    upgrade = units["schoolgate-db-upgrade.service"]
    argv = host.command(upgrade, one(upgrade, "Service", "ExecStart"))
    out = run_once(argv, env("schoolgate-db-upgrade.service"), host.state)
    assert "database is up to date" in out
    assert database.exists()
    assert (host.state / "audit.key").exists()
    nas_secret = seed_school(f"sqlite:///{database}", host.state)

    commands: dict[str, list[str]] = {}
    envs: dict[str, dict[str, str]] = {}
    for role in ("radius", "portal", "coa"):
        unit = units[f"schoolgate-{role}.service"]
        argv = host.command(unit, one(unit, "Service", "ExecStart"))
        commands[role] = with_ports(role, argv, ports)
        envs[role] = env(f"schoolgate-{role}.service")
    capture = os.geteuid() == 0
    if capture:
        unit = units["schoolgate-monitor@.service"]
        argv = host.command(unit, one(unit, "Service", "ExecStart"), instance="lo")
        assert substitute(argv, {"--interface": "lo"}) == argv
        commands["monitor"] = [*argv, "--duration", "4"]
        envs["monitor"] = env("schoolgate-monitor@.service")
    # The timers' one-shots, each ExecStart= line (exit 0), while the servers run.
    retention = units["schoolgate-retention.service"]
    report = units["schoolgate-report.service"]
    assert "schoolgate/reports" in values(report, "Service", "StateDirectory")
    (host.state / "reports").mkdir(mode=0o700)  # StateDirectory= creates it
    oneshots = [
        (host.command(unit, line), env(name))
        for name, unit in (
            ("schoolgate-retention.service", retention),
            ("schoolgate-report.service", report),
        )
        for line in values(unit, "Service", "ExecStart")
    ]
    assert len(oneshots) == 2  # `purge`; `report weekly --output-dir .../reports`
    with started(commands, envs, host.state) as running:
        run_all(oneshots, host.state)
        check_servers(
            {k: v for k, v in running.items() if k != "monitor"}, ports, nas_secret, has_metrics()
        )
        if capture:
            assert running["monitor"].process.wait(timeout=60) == 0, running["monitor"].output()
    # The weekly report and the week's exports beside it (the report names its first day).
    written = sorted(p.name.rsplit("-", 3)[0] for p in (host.state / "reports").iterdir())
    assert written == ["alerts-all", "coa-all", "incidents-all", "report-all"], written
    page = next((host.state / "reports").glob("report-all-*.txt")).read_text()
    assert "audit chain: verified" in page


def test_the_technicians_schoolgate_wrapper(tmp_path: Path) -> None:
    """deploy/systemd/schoolgate-cli as deploy/README.md installs it (/usr/local/bin/schoolgate),
    with its paths moved under the test's directory and the service user replaced by this
    test's own (no `schoolgate` user here): it reads the env file and schoolgate.toml, runs in
    the state directory, and a mistake is one line on stderr with a non-zero exit."""
    import grp
    import pwd

    if os.geteuid() != 0:
        pytest.skip("setpriv --init-groups needs root, as the wrapper is run")
    script = (UNITS / "schoolgate-cli").read_text()
    database = tmp_path / "schoolgate.db"
    host = Host(tmp_path, database)
    env_file = tmp_path / "schoolgate.env"
    env_file.write_text(host.path((UNITS / "schoolgate.env").read_text()))
    user = pwd.getpwuid(os.geteuid()).pw_name
    group = grp.getgrgid(os.getegid()).gr_name
    moved = {
        "/etc/schoolgate/schoolgate.env": str(env_file),
        "/etc/schoolgate/schoolgate.toml": str(host.config),
        f"cd {STATE}": f"cd {host.state}",
        "--reuid=schoolgate --regid=schoolgate": f"--reuid={user} --regid={group}",
        BINARY: str(Path(sys.executable).with_name("schoolgate")),
    }
    for old, new in moved.items():
        assert script.count(old) == 1, old  # the wrapper as shipped names each exactly once
        script = script.replace(old, new)
    wrapper = tmp_path / "schoolgate"
    wrapper.write_text(script)
    wrapper.chmod(0o755)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SCHOOLGATE_")}

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(wrapper), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env={**clean, "COLUMNS": "200"},
            cwd=tmp_path,
            timeout=90,
            check=False,
        )

    upgraded = run("db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert database.exists()  # schoolgate.toml's database_url
    assert (host.state / "audit.key").exists()  # SCHOOLGATE_STATE_DIR from the env file
    loaded = run("policy", "load", str(DEPLOY / "policies" / "westgate.toml"))
    assert loaded.returncode == 0, loaded.stderr
    # deploy/README.md's line: the shared secret on stdin, Cisco's CoA port by default.
    added = run(
        "nas", "add", "--site", "westgate", "--name", "wlc1", "--address", "10.0.0.2",
        "--vendor", "cisco", "--secret", "-", stdin="wlc1-shared-secret\n",
    )  # fmt: skip
    assert added.stdout.strip() == "added NAS wlc1 (10.0.0.2, cisco, CoA udp 1700) at westgate"
    wrong = run("nas", "add", "--site", "narnia", "--name", "x", "--address", "10.0.0.3",
                "--secret", "-", stdin="another-secret\n")  # fmt: skip
    assert wrong.returncode != 0
    assert wrong.stderr.splitlines() == ["error: unknown site 'narnia' (sites: westgate)"]
    assert "Traceback" not in wrong.stdout + wrong.stderr
