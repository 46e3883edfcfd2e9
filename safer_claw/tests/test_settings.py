"""Settings from the environment: fail closed in production, run alone locally."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from safer_claw.encryption import generate_key_entry

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = {
    "DEBUG": "false",
    "SECRET_KEY": "x" * 60 + "-production-like-secret-key-with-enough-entropy",
    "ENCRYPTION_KEYS": generate_key_entry("prod1"),
    "ALLOWED_HOSTS": "saferclaw.example.com",
    "DATABASE_URL": "sqlite:////tmp/saferclaw-settings-test.sqlite3",
}


def manage(*args: str, env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {
            "DEBUG",
            "SECRET_KEY",
            "ENCRYPTION_KEYS",
            "ALLOWED_HOSTS",
            "DJANGO_SETTINGS_MODULE",
            "SECURE_SSL_REDIRECT",
            "DATABASE_URL",
            "REDIS_URL",
        }
    }
    return subprocess.run(
        [sys.executable, str(cwd / "manage.py"), *args],
        env={**clean, "DJANGO_SETTINGS_MODULE": "safer_claw.settings", **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("missing", ["SECRET_KEY", "ENCRYPTION_KEYS", "ALLOWED_HOSTS"])
def test_production_refuses_to_start_without_its_secrets(missing):
    env = {k: v for k, v in PRODUCTION.items() if k != missing}
    result = manage("check", env=env)
    assert result.returncode != 0
    assert f"{missing} is not set" in result.stderr


def test_production_refuses_a_malformed_key_ring():
    result = manage("check", env={**PRODUCTION, "ENCRYPTION_KEYS": "k1:tooshort"})
    assert result.returncode != 0
    assert "AES-256 needs 32" in result.stderr


def test_check_deploy_is_clean_in_a_production_like_environment():
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION)
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_a_local_run_generates_its_keys_once_with_a_warning(tmp_path):
    # A copy of the project's entry points in a fresh folder: no .local/ yet.
    project = tmp_path / "project"
    project.mkdir()
    packages = [p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()]
    for name in ("manage.py", "templates", "static", *packages):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, project / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, project / name)
    first = manage("check", env={"DEBUG": "true"}, cwd=project)
    assert first.returncode == 0, first.stderr
    assert "ENCRYPTION_KEYS is not set; generated a local one" in first.stderr
    keys = project / ".local" / "encryption_keys"
    assert keys.stat().st_mode & 0o777 == 0o600
    generated = keys.read_text()

    second = manage("check", env={"DEBUG": "true"}, cwd=project)
    assert second.returncode == 0
    assert "generated" not in second.stderr
    assert keys.read_text() == generated
