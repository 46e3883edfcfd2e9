"""A real Celery worker process takes a task from the broker and completes it.

The broker is the configured one: Redis when REDIS_URL is set (CI), otherwise
the embedded filesystem broker. The task is a real one: the verification email
that sign-up enqueues, delivered by the worker to a mail folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.urls import reverse

from safer_claw.accounts.tests.factories import PASSWORD
from safer_claw.celery import app

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.worker, pytest.mark.django_db]


@pytest.fixture
def worker(tmp_path):
    """A worker on a queue of its own, so no other worker can take the task."""
    queue = f"test-{uuid.uuid4().hex[:8]}"
    mail_dir = tmp_path / "mail"
    mail_dir.mkdir()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "safer_claw.settings",
        "DEBUG": "false",
        "SECRET_KEY": settings.SECRET_KEY,
        "ENCRYPTION_KEYS": settings.ENCRYPTION_KEYS,
        "ALLOWED_HOSTS": "localhost",
        "EMAIL_URL": f"filemail:///{mail_dir}",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "safer_claw",
            "worker",
            "--pool=solo",
            "-Q",
            queue,
            "--without-mingle",
            "--without-gossip",
            "--loglevel=INFO",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    old_eager, old_queue = app.conf.task_always_eager, app.conf.task_default_queue
    app.conf.task_always_eager, app.conf.task_default_queue = False, queue
    try:
        yield mail_dir, process
    finally:
        app.conf.task_always_eager, app.conf.task_default_queue = old_eager, old_queue
        process.terminate()
        process.wait(timeout=30)


def wait_for_file(folder: Path, process: subprocess.Popen, deadline_s: float = 60) -> Path:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        files = list(folder.iterdir())
        if files:
            return files[0]
        if process.poll() is not None:
            pytest.fail(f"worker exited early:\n{process.stdout.read()}")
        time.sleep(0.2)
    process.terminate()
    pytest.fail(f"no email within {deadline_s}s; worker said:\n{process.communicate()[0]}")


def test_worker_process_delivers_the_signup_email(
    client, worker, django_capture_on_commit_callbacks
):
    mail_dir, process = worker
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("account_signup"),
            {"email": "erin@example.com", "password1": PASSWORD, "password2": PASSWORD},
        )
    assert response.status_code == 302

    delivered = wait_for_file(mail_dir, process).read_text()
    assert "To: erin@example.com" in delivered
    assert "/accounts/confirm-email/" in delivered
