"""ASGI entry point: uvicorn serves ``safer_claw.asgi:application``.

The LLM gateway's paths go to its own lean ASGI app (see gateway/proxy.py for
why), and so does the kill switch webhook (see agents/webhooks.py); everything
else goes through Django. Before any of them, the request's path, query and
headers are checked against safer_claw.boundary (the lean apps skip Django's
middleware, so this is where they get it). Lifespan events are answered here (Django's handler
takes none): at shutdown the gateway closes its database pool and upstream
connections on this worker's loop.
"""

import gc
import logging
import os

import orjson
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "safer_claw.settings")

django_application = get_asgi_application()

from agents.webhooks import PATH_PREFIX as KILL_PATH  # noqa: E402 - needs setup()
from agents.webhooks import agent_kill_asgi  # noqa: E402
from gateway.proxy import application as gateway_application  # noqa: E402
from gateway.proxy import refuse_bad_input as gateway_refuse  # noqa: E402
from gateway.proxy import shutdown as gateway_shutdown  # noqa: E402
from safer_claw.api import error_body  # noqa: E402
from safer_claw.boundary import scope_problem  # noqa: E402
from safer_claw.views import JSON_PREFIXES  # noqa: E402

logger = logging.getLogger("safer_claw.boundary")


async def application(scope, receive, send):
    if scope["type"] == "http" and (problem := scope_problem(scope)) is not None:
        logger.warning("refused %s %r: %s", scope["method"], scope["path"][:200], problem)
        await refuse(scope, send, problem.message)
    elif scope["type"] == "http" and scope["path"].startswith("/gateway/"):
        await gateway_application(scope, receive, send)
    elif scope["type"] == "http" and scope["path"].startswith(KILL_PATH):
        await agent_kill_asgi(scope, receive, send)
    elif scope["type"] == "lifespan":
        await lifespan(receive, send)
    else:
        await django_application(scope, receive, send)


async def refuse(scope, send, message: str) -> None:
    """A 400 in the shape of the path's family: the provider's under /gateway/."""
    if scope["path"].startswith("/gateway/"):
        await gateway_refuse(scope, send, message)
        return
    if scope["path"].startswith(JSON_PREFIXES):
        body, kind = orjson.dumps(error_body("bad_request", message)), b"application/json"
    else:
        body, kind = message.encode(), b"text/plain; charset=utf-8"
    headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 400, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            # What the worker built while starting (Django, the URLconf, the apps: some
            # 140,000 objects) lives as long as it does: out of the collector's way, so a
            # full collection no longer stops the gateway's event loop for 70-90 ms.
            gc.freeze()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await gateway_shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return
