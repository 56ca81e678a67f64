from __future__ import annotations

import os

import pytest

from service.config import load_settings
from service.errors import Invalid


def test_defaults_to_sqlite_in_working_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SCHOOLGATE_DATABASE_URL", raising=False)
    monkeypatch.delenv("SCHOOLGATE_CONFIG", raising=False)
    settings = load_settings()
    assert settings.database_url == f"sqlite:///{tmp_path / 'schoolgate.db'}"


def test_toml_file_then_environment_wins(tmp_path, monkeypatch) -> None:
    config = tmp_path / "schoolgate.toml"
    config.write_text('database_url = "postgresql+psycopg://db/schoolgate"\ncoa_retries = 5\n')
    monkeypatch.delenv("SCHOOLGATE_DATABASE_URL", raising=False)
    assert load_settings(config).coa_retries == 5
    assert load_settings(config).database_url == "postgresql+psycopg://db/schoolgate"
    monkeypatch.setenv("SCHOOLGATE_DATABASE_URL", "sqlite:///other.db")
    assert load_settings(config).database_url == "sqlite:///other.db"


def test_production_refuses_the_default_secret(monkeypatch, tmp_path) -> None:
    """Issue 11 changed this: there is no default any more (unset, `db upgrade` generates one
    and `serve` refuses to start without it), and a published or short key is refused."""
    monkeypatch.delenv("SCHOOLGATE_SECRET_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    assert load_settings(environment="production").secret_key is None
    with pytest.raises(Invalid, match="SCHOOLGATE_SECRET_KEY is a published default"):
        load_settings(environment="production", secret_key="change-me")
    with pytest.raises(Invalid, match="SCHOOLGATE_SECRET_KEY is only 12 characters long"):
        load_settings(environment="production", secret_key="x" * 12)
    assert load_settings(environment="production", secret_key="x" * 32).environment == "production"


def test_bad_config_file_is_named(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("coa_retries = [\n")
    with pytest.raises(Invalid, match="is not valid TOML"):
        load_settings(bad)
    with pytest.raises(Invalid, match="cannot read config file"):
        load_settings(tmp_path / "missing.toml")
    typo = tmp_path / "typo.toml"
    typo.write_text('coa_retries = "many"\n')
    with pytest.raises(Invalid, match="bad setting coa_retries"):
        load_settings(typo)


def test_settings_reach_a_child_process_whole(tmp_path, monkeypatch) -> None:
    """`schoolgate serve` hands its settings (a --config file's too) to `radius serve`."""
    from pydantic import SecretStr

    from service.cli.serve import settings_env

    config = tmp_path / "schoolgate.toml"
    config.write_text(
        'coa_retries = 7\nportal_oidc_allowed_domains = ["westgate.sch.uk"]\n'
        "[retention_days]\nflows = 30\n"
    )
    for key in list(os.environ):
        if key.startswith("SCHOOLGATE_"):
            monkeypatch.delenv(key)
    settings = load_settings(config).model_copy(
        update={"portal_oidc_client_secret": SecretStr("s3cret")}
    )
    for key, value in settings_env(settings).items():
        monkeypatch.setenv(key, value)
    child = load_settings()
    assert child == settings
    assert child.portal_oidc_client_secret is not None
    assert child.portal_oidc_client_secret.get_secret_value() == "s3cret"
    assert child.retention_days["flows"] == 30
    assert child.retention_days["alerts"] == 730  # tables the file did not name keep defaults
