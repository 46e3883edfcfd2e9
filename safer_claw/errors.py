"""Turning validation errors into one readable line (commands, logs)."""

from __future__ import annotations

from django.core.exceptions import ValidationError


def describe_validation_error(exc: ValidationError) -> str:
    if hasattr(exc, "error_dict"):
        return "; ".join(
            f"{field}: {' '.join(messages)}" for field, messages in exc.message_dict.items()
        )
    return " ".join(exc.messages)
