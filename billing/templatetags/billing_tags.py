"""{% billing_mode as mode %}: "stripe", "development" or "off", for any template."""

from __future__ import annotations

from django import template

from billing.services import billing_mode as current_mode

register = template.Library()


@register.simple_tag
def billing_mode() -> str:
    return current_mode().value
