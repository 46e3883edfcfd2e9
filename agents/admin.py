"""Agents in admin are read-mostly: state changes go through services."""

from __future__ import annotations

from django.contrib import admin

from agents.models import Agent, AgentEvent, KillSwitchCall


class AgentEventInline(admin.TabularInline):
    model = AgentEvent
    extra = 0
    can_delete = False
    fields = ["created_at", "source", "actor", "from_status", "to_status", "reason"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "owner",
        "status",
        "droplet",
        "tokens_today",
        "cost_this_period",
        "last_activity_at",
        "created_at",
    ]
    list_filter = ["status", "ai_provider", "droplet"]
    search_fields = ["name", "owner__email", "id"]
    inlines = [AgentEventInline]
    fields = [
        "id",
        "owner",
        "name",
        "status",
        "status_reason",
        "droplet",
        "container_id",
        "ai_provider",
        "provider_key_on_file",
        "cpu_limit",
        "memory_limit",
        "pids_limit",
        "read_only_root",
        "drop_all_capabilities",
        "max_tokens_per_request",
        "max_tool_calls_per_run",
        "max_runtime_seconds",
        "daily_token_cap",
        "monthly_cost_cap",
        "tokens_today",
        "tokens_day",
        "cost_this_period",
        "period_started_at",
        "last_activity_at",
        "created_at",
        "updated_at",
    ]
    readonly_fields = fields

    @admin.display(boolean=True, description="Provider key on file")
    def provider_key_on_file(self, obj: Agent) -> bool:
        return obj.ai_api_key is not None

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(KillSwitchCall)
class KillSwitchCallAdmin(admin.ModelAdmin):
    """Every kill switch call, accepted or refused; read-only."""

    list_display = [
        "received_at",
        "agent_id_given",
        "accepted",
        "status_code",
        "outcome",
        "signed_with",
        "action",
        "source_ip",
    ]
    list_filter = ["accepted", "outcome", "signed_with"]
    search_fields = ["agent_id_given", "source_ip"]
    date_hierarchy = "received_at"

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
