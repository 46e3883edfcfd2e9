from django.apps import AppConfig


class IntegrationsConfig(AppConfig):
    name = "integrations"

    def ready(self) -> None:
        # The Google tools join the registry the tool endpoint reads (agents.tools).
        from integrations.google.tools import register_tools

        register_tools()
