"""/api/agents/: the user's agents, and a new one, which is a checkout.

Creating an agent starts paying for it, so it goes through billing's
:func:`billing.services.start_checkout` like the dashboard's plan chooser:
the plan's limits and its number of agents per owner apply, and the agent
runs only once its subscription is active. Everything else about an agent
is in agents.apis.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, extend_schema_field, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from agents.apis import ERRORS, AgentListApi, AgentOutputSerializer, ErrorSerializer
from agents.models import AIProvider
from billing.models import Plan
from billing.services import (
    BillingError,
    BillingUnavailable,
    PlanFull,
    offered_plans,
    start_checkout,
)


class PlanFullError(APIException):
    status_code = status.HTTP_402_PAYMENT_REQUIRED
    default_code = "agent_limit_reached"
    default_detail = "The plan allows no more agents."


class BillingUnavailableError(APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "billing_unavailable"
    default_detail = "Billing is not available; try again later."


def _api_error(exc: Exception) -> Exception:
    if isinstance(exc, PlanFull):
        return PlanFullError(str(exc))
    if isinstance(exc, BillingUnavailable):
        return BillingUnavailableError(str(exc))
    if isinstance(exc, BillingError):
        return ValidationError({"plan": [str(exc)]})
    return exc


class AgentListCreateApi(AgentListApi):
    @extend_schema_serializer(component_name="NewAgent")
    class InputSerializer(serializers.Serializer):
        plan = serializers.CharField(
            max_length=64, help_text="The name of an offered plan, as on the plan chooser."
        )
        name = serializers.CharField(max_length=64)
        ai_provider = serializers.ChoiceField(choices=AIProvider.choices, default=AIProvider.OPENAI)
        provider_key = serializers.CharField(
            write_only=True, required=False, allow_blank=True, max_length=500, trim_whitespace=True
        )
        # Lower than the plan's only (checked against it by start_checkout).
        daily_token_cap = serializers.IntegerField(required=False, min_value=0)
        monthly_cost_cap = serializers.DecimalField(
            required=False, max_digits=10, decimal_places=2, min_value=0
        )

        def validate_plan(self, value: str) -> Plan:
            plans = offered_plans()
            plan = plans.filter(name=value).first()
            if plan is None:
                names = ", ".join(plans.values_list("name", flat=True)) or "none"
                raise serializers.ValidationError(
                    f"No offered plan is called that (offered: {names})."
                )
            return plan

    @extend_schema_serializer(component_name="CreatedAgent")
    class CreatedSerializer(AgentOutputSerializer):
        kill_secret = serializers.CharField(
            help_text="The agent's own kill switch secret; shown this once."
        )
        checkout_url = serializers.SerializerMethodField(
            help_text="Stripe's checkout page where the agent is paid for; it runs once paid. "
            "Null when the plan is active at once (development mode)."
        )

        @extend_schema_field(serializers.URLField(allow_null=True))
        def get_checkout_url(self, agent: Any) -> str | None:
            return self.context["checkout_url"]

    def handle_exception(self, exc: Exception) -> Response:
        return super().handle_exception(_api_error(exc))

    @extend_schema(
        request=InputSerializer,
        responses={
            201: CreatedSerializer,
            400: ErrorSerializer,
            402: ErrorSerializer,
            503: ErrorSerializer,
            **ERRORS,
        },
        description="Create an agent on a plan: it awaits payment at the returned "
        "checkout_url (with Stripe), or is active at once (development mode). 402 when the "
        "plan's number of agents per owner is reached.",
    )
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data: dict[str, Any] = dict(serializer.validated_data)
        started = start_checkout(
            owner=request.user,
            plan=data.pop("plan"),
            name=data.pop("name"),
            provider=data.pop("ai_provider"),
            provider_key=data.pop("provider_key", None) or None,
            limits=data,
            absolute_url=request.build_absolute_uri,
            actor=request.user,
        )
        created = self.CreatedSerializer(
            started.agent, context={"checkout_url": started.checkout_url}
        )
        return Response(created.data, status=status.HTTP_201_CREATED)
