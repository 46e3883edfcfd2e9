from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.db.models import QuerySet
from django.http import HttpRequest

from agents.kill_switch import PENDING, kill_agents_of_owner
from safer_claw.accounts.models import User


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    ordering = ["email"]
    list_display = ["email", "is_active", "is_staff", "date_joined", "last_login"]
    search_fields = ["email"]
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        ("Permissions", {"fields": ("is_active", "is_staff", "is_superuser", "groups")}),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "password1", "password2")}),)
    readonly_fields = ["last_login", "date_joined"]
    actions = ["kill_all_agents"]

    def has_kill_agent_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("agents.kill_agent")

    @admin.action(description="Kill all agents of the selected users", permissions=["kill_agent"])
    def kill_all_agents(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        """The kill switch for every agent of these users: tokens revoked, containers stopped."""
        for user in queryset:
            outcomes = kill_agents_of_owner(owner=user, actor=request.user)
            pending = sum(outcome.container == PENDING for outcome in outcomes)
            self.message_user(
                request,
                f"{user.email}: {len(outcomes)} agent(s) killed"
                + (
                    f"; {pending} container(s) will stop when their droplet answers"
                    if pending
                    else ""
                ),
                messages.WARNING if pending else messages.SUCCESS,
            )
