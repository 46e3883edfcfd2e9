"""The Safer-Claw control plane project package."""

from safer_claw.celery import app as celery_app

__all__ = ("celery_app",)
