"""Billing in admin: plans are edited here; everything else is read-only, and
failed agents get an alert and a retry."""

from __future__ import annotations

import json

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils.html import format_html

from agents.models import AgentStatus
from billing.models import Customer, FailedAgent, Plan, StripeEvent, Subscription
from billing.services import BillingError, apply_plan_to_agents, retry_deploy


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "monthly_price",
        "stripe_price_id",
        "max_agents",
        "cpu_limit",
        "memory_limit",
        "daily_token_cap",
        "monthly_cost_cap",
        "is_active",
    ]
    list_filter = ["is_active"]
    fieldsets = [
        (
            "Offer",
            {
                "fields": [
                    "name",
                    "description",
                    "monthly_price",
                    "stripe_price_id",
                    "is_active",
                    "sort_order",
                    "max_agents",
                ]
            },
        ),
        ("Container (per agent)", {"fields": ["cpu_limit", "memory_limit", "pids_limit"]}),
        ("Caps (per agent)", {"fields": ["daily_token_cap", "monthly_cost_cap"]}),
        (
            "Guardrail defaults (per agent)",
            {
                "fields": [
                    "max_tokens_per_request",
                    "max_tool_calls_per_run",
                    "max_runtime_seconds",
                    "max_tool_calls_per_day",
                    "max_requests_per_minute",
                    "allowed_tools",
                ]
            },
        ),
    ]
    actions = ["apply_to_agents"]

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # subscriptions point at plans: retire one by unticking "offered"

    @admin.action(description="Apply the plan's limits to its live agents", permissions=["change"])
    def apply_to_agents(self, request: HttpRequest, queryset: QuerySet[Plan]) -> None:
        for plan in queryset:
            count = apply_plan_to_agents(plan=plan, actor=request.user)
            self.message_user(request, f"{plan.name}: limits applied to {count} agent(s).")


@admin.register(Subscription)
class SubscriptionAdmin(ReadOnlyAdmin):
    list_display = ["agent", "owner", "plan", "status", "dev_mode", "complimentary", "created_at"]
    list_filter = ["status", "plan", "dev_mode", "complimentary"]
    search_fields = [
        "agent__name",
        "owner__email",
        "stripe_subscription_id",
        "stripe_checkout_session_id",
        "stripe_customer_id",
    ]


@admin.register(Customer)
class CustomerAdmin(ReadOnlyAdmin):
    list_display = ["user", "stripe_customer_id", "created_at"]
    search_fields = ["user__email", "stripe_customer_id"]


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnlyAdmin):
    list_display = ["id", "type", "outcome", "message", "attempts", "received_at"]
    list_filter = ["outcome", "type"]
    search_fields = ["id", "message"]
    fields = [
        "id",
        "type",
        "livemode",
        "created",
        "received_at",
        "handled_at",
        "outcome",
        "message",
        "attempts",
        "pretty_payload",
    ]
    readonly_fields = fields

    @admin.display(description="payload")
    def pretty_payload(self, obj: StripeEvent) -> str:
        return format_html("<pre>{}</pre>", json.dumps(obj.payload, indent=2, sort_keys=True))


@admin.register(FailedAgent)
class FailedAgentAdmin(ReadOnlyAdmin):
    """The operators' alert list: agents in `failed`, with the reason and a retry."""

    list_display = ["name", "owner", "status_reason", "updated_at"]
    search_fields = ["name", "owner__email", "id"]
    actions = ["retry_deploys"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[FailedAgent]:
        return super().get_queryset(request).filter(status=AgentStatus.FAILED)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict | None = None
    ) -> HttpResponse:
        failed = self.get_queryset(request).count()
        if failed and request.method == "GET":
            self.message_user(
                request,
                f"{failed} agent(s) failed and are not running; their owners were emailed. "
                "Fix the cause (capacity, droplets), then select them and retry the deploy.",
                messages.WARNING,
            )
        return super().changelist_view(request, extra_context)

    def has_retry_deploy_permission(self, request: HttpRequest) -> bool:
        # The list is read-only for everyone (has_change_permission is False); this
        # model's "change" permission is what an operator needs to redeploy.
        return request.user.has_perm("billing.change_failedagent")

    @admin.action(description="Retry the deploy", permissions=["retry_deploy"])
    def retry_deploys(self, request: HttpRequest, queryset: QuerySet[FailedAgent]) -> None:
        queued = 0
        for agent in queryset:
            try:
                retry_deploy(agent=agent, actor=request.user)
            except BillingError as exc:
                self.message_user(request, f"{agent.name} not retried: {exc}", messages.ERROR)
            else:
                queued += 1
        if queued:
            self.message_user(request, f"Deploy queued for {queued} agent(s).")
