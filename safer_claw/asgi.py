"""ASGI entry point: uvicorn serves ``safer_claw.asgi:application``.

The LLM gateway's paths go to its own lean ASGI app (see gateway/proxy.py for
why), and so does the kill switch webhook (see agents/webhooks.py); everything
else goes through Django. Lifespan events are answered here (Django's handler
takes none): at shutdown the gateway closes its database pool and upstream
connections on this worker's loop.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "safer_claw.settings")

django_application = get_asgi_application()

from agents.webhooks import PATH_PREFIX as KILL_PATH  # noqa: E402 - needs setup()
from agents.webhooks import agent_kill_asgi  # noqa: E402
from gateway.proxy import application as gateway_application  # noqa: E402
from gateway.proxy import shutdown as gateway_shutdown  # noqa: E402


async def application(scope, receive, send):
    if scope["type"] == "http" and scope["path"].startswith("/gateway/"):
        await gateway_application(scope, receive, send)
    elif scope["type"] == "http" and scope["path"].startswith(KILL_PATH):
        await agent_kill_asgi(scope, receive, send)
    elif scope["type"] == "lifespan":
        await lifespan(receive, send)
    else:
        await django_application(scope, receive, send)


async def lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await gateway_shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return
