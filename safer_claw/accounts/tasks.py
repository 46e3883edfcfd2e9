"""Email delivery, retried while the mail server is unreachable."""

from __future__ import annotations

import smtplib

from celery import shared_task
from django.core.mail import EmailMultiAlternatives


@shared_task(
    autoretry_for=(smtplib.SMTPException, OSError),
    retry_backoff=10,
    retry_backoff_max=600,
    max_retries=8,
)
def send_email_message(
    *, subject: str, body: str, from_email: str, to: list[str], alternatives: list[list[str]]
) -> None:
    message = EmailMultiAlternatives(subject=subject, body=body, from_email=from_email, to=to)
    for content, mimetype in alternatives:
        message.attach_alternative(content, mimetype)
    message.send()
