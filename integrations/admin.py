"""Operators see each connection's state, never its tokens."""

from __future__ import annotations

from django.contrib import admin

from integrations.google.models import GoogleIntegration, PendingRevocation


@admin.register(GoogleIntegration)
class GoogleIntegrationAdmin(admin.ModelAdmin):
    list_display = ("agent", "status", "granted", "connected_at", "last_refreshed_at")
    list_filter = ("status",)
    fields = readonly_fields = (
        "agent",
        "status",
        "granted",
        "not_granted_scopes",
        "broken_reason",
        "connected_at",
        "last_refreshed_at",
    )

    @admin.display(description="granted")
    def granted(self, obj: GoogleIntegration) -> str:
        return ", ".join(c.label for c in obj.granted_capabilities) or "nothing"

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(PendingRevocation)
class PendingRevocationAdmin(admin.ModelAdmin):
    list_display = ("agent", "attempts", "last_error", "created_at", "last_attempt_at")
    fields = readonly_fields = list_display

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
