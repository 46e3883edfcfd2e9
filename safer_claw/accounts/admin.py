from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin

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

    @admin.action(description="Kill all agents of the selected users")
    def kill_all_agents(self, request, queryset) -> None:
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
