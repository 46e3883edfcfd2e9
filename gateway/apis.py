"""GET /api/agents/<id>/usage: an agent's spend per day, from the usage ledger.

It lives here, not in agents, because agents must not import the gateway.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from agents.apis import ERRORS, AgentApi, ErrorSerializer
from gateway.selectors import MAX_USAGE_DAYS, agent_daily_usage

DEFAULT_DAYS = 30


class AgentUsageApi(AgentApi):
    class InputSerializer(serializers.Serializer):
        to = serializers.DateField(required=False, help_text="Last UTC day (default: today).")

        def get_fields(self) -> dict[str, serializers.Field]:
            # "from" is a Python keyword, so it cannot be a class attribute.
            fields = super().get_fields()
            fields["from"] = serializers.DateField(
                required=False, help_text=f"First UTC day (default: {DEFAULT_DAYS} days ago)."
            )
            return fields

        def validate(self, data: dict[str, Any]) -> dict[str, Any]:
            end = data.get("to") or dt.datetime.now(dt.UTC).date()
            back = min(DEFAULT_DAYS - 1, (end - dt.date.min).days)
            start = data.get("from") or end - dt.timedelta(days=back)
            if start > end:
                raise serializers.ValidationError({"from": "must not be after 'to'."})
            if (end - start).days >= MAX_USAGE_DAYS:
                raise serializers.ValidationError(
                    {"from": f"the range may cover at most {MAX_USAGE_DAYS} days."}
                )
            return {"start": start, "end": end}

    @extend_schema_serializer(component_name="AgentUsage")
    class OutputSerializer(serializers.Serializer):
        @extend_schema_serializer(component_name="DayUsage")
        class DaySerializer(serializers.Serializer):
            date = serializers.DateField()
            tokens = serializers.IntegerField()
            cost = serializers.DecimalField(max_digits=16, decimal_places=6)
            calls = serializers.IntegerField()

        agent = serializers.UUIDField()
        days = DaySerializer(many=True)
        total_tokens = serializers.IntegerField()
        total_cost = serializers.DecimalField(max_digits=18, decimal_places=6)

    @extend_schema(
        parameters=[InputSerializer],
        responses={200: OutputSerializer, 400: ErrorSerializer, **ERRORS},
        description="Tokens and cost per UTC day from the usage ledger (settled calls).",
    )
    def get(self, request: Request, agent_id: Any) -> Response:
        agent = self.get_agent(agent_id)
        params = self.InputSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        days = agent_daily_usage(agent=agent, **params.validated_data)
        usage = {
            "agent": agent.id,
            "days": days,
            "total_tokens": sum(day.tokens for day in days),
            "total_cost": sum((day.cost for day in days), Decimal("0")),
        }
        return Response(self.OutputSerializer(usage).data)
