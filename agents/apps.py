from django.apps import AppConfig


class AgentsConfig(AppConfig):
    name = "agents"

    def ready(self) -> None:
        from agents.builtin_tools import register_builtin_tools

        register_builtin_tools()
