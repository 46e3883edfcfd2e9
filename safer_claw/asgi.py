"""ASGI entry point: uvicorn serves ``safer_claw.asgi:application``."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "safer_claw.settings")

application = get_asgi_application()
