"""Forms of the billing pages."""

from __future__ import annotations

from decimal import Decimal

from django import forms
from django.core.exceptions import ValidationError
from django.db.models import QuerySet

from agents.models import AIProvider
from billing.models import Plan


class ServiceErrorsMixin:
    """Shows a service's ValidationError on the fields it names (others on top)."""

    def add_service_error(self, exc: ValidationError) -> None:
        if not hasattr(exc, "error_dict"):
            self.add_error(None, exc)
            return
        for field, errors in exc.error_dict.items():
            self.add_error(field if field in self.fields else None, errors)


class NewAgentForm(ServiceErrorsMixin, forms.Form):
    plan = forms.ModelChoiceField(
        queryset=Plan.objects.none(), widget=forms.RadioSelect, empty_label=None
    )
    name = forms.CharField(max_length=64, help_text="Letters, digits, spaces, '.', '_' or '-'.")
    provider = forms.ChoiceField(choices=AIProvider.choices, initial=AIProvider.OPENAI)
    provider_key = forms.CharField(
        label="Provider API key",
        required=False,
        max_length=500,
        widget=forms.PasswordInput(render_value=False),
        help_text="Kept encrypted by the control plane; your agent never sees it. "
        "Without one, the agent's model calls are refused.",
    )

    def __init__(self, *args: object, plans: QuerySet[Plan], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.fields["plan"].queryset = plans


class LimitsForm(ServiceErrorsMixin, forms.Form):
    daily_token_cap = forms.IntegerField(label="Tokens per day", min_value=0)
    monthly_cost_cap = forms.DecimalField(
        label="Model cost per month (USD)",
        min_value=Decimal("0"),
        max_digits=10,
        decimal_places=2,
    )
