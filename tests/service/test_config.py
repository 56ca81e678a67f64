from __future__ import annotations

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


def test_production_refuses_the_default_secret(monkeypatch) -> None:
    monkeypatch.delenv("SCHOOLGATE_SECRET_KEY", raising=False)
    with pytest.raises(Invalid, match="SCHOOLGATE_SECRET_KEY must be set"):
        load_settings(environment="production")
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
