from __future__ import annotations

from django.contrib import admin

from gateway.models import ModelPrice, UsageRecord
from gateway.proxy import forget_prices


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    list_display = [
        "provider",
        "model",
        "input_per_mtok",
        "cached_input_per_mtok",
        "cache_write_5m_per_mtok",
        "cache_write_1h_per_mtok",
        "output_per_mtok",
        "updated_at",
    ]
    list_filter = ["provider"]
    search_fields = ["model"]

    def save_model(self, request, obj, form, change) -> None:
        super().save_model(request, obj, form, change)
        forget_prices()  # this process at once; others within the cache's 10 s


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    """The ledger is written by the gateway only."""

    list_display = [
        "created_at",
        "agent",
        "model",
        "status",
        "input_tokens",
        "cached_input_tokens",
        "output_tokens",
        "cost",
        "charged_reservation",
        "latency_ms",
    ]
    list_filter = ["status", "provider", "model"]
    search_fields = ["agent__name", "agent__id", "upstream_request_id"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
