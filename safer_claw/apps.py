from django.apps import AppConfig


class SaferClawConfig(AppConfig):
    name = "safer_claw"
    verbose_name = "Safer-Claw"

    def ready(self) -> None:
        from safer_claw import schema  # noqa: F401 - registers the schema's field extension
