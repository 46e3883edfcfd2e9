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
    # To a file, not a pipe nobody reads until the end: a full pipe would stall it.
    log = (tmp_path / "worker.log").open("w")
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
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    old_eager, old_queue = app.conf.task_always_eager, app.conf.task_default_queue
    app.conf.task_always_eager, app.conf.task_default_queue = False, queue
    try:
        yield mail_dir, process
    finally:
        app.conf.task_always_eager, app.conf.task_default_queue = old_eager, old_queue
        process.terminate()
        process.wait(timeout=30)
        log.close()


# Django's file mail backend ends each message with this line. The file exists from
# the moment the backend opens it, so only this says the message is all there.
MESSAGE_END = "-" * 79 + "\n"


def wait_for_mail(folder: Path, process: subprocess.Popen, deadline_s: float = 60) -> str:
    """The first message the worker delivered to ``folder``, once written whole."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        for path in folder.iterdir():
            text = path.read_text()
            if text.endswith(MESSAGE_END):
                return text
        if process.poll() is not None:
            pytest.fail(f"worker exited early:\n{worker_said(folder)}")
        time.sleep(0.2)
    process.terminate()
    process.wait(timeout=30)
    pytest.fail(f"no whole email within {deadline_s}s; worker said:\n{worker_said(folder)}")


def worker_said(mail_dir: Path) -> str:
    return (mail_dir.parent / "worker.log").read_text()


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

    delivered = wait_for_mail(mail_dir, process)
    assert "To: erin@example.com" in delivered
    assert "/accounts/confirm-email/" in delivered
