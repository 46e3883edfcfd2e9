from django.apps import AppConfig


class SaferClawConfig(AppConfig):
    name = "safer_claw"
    verbose_name = "Safer-Claw"
