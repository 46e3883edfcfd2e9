"""Run the Google stand-in: ``python -m integrations.google.tests.standin.server``.

Environment: STANDIN_DB (a SQLite file), STANDIN_CLIENT_ID, STANDIN_CLIENT_SECRET,
STANDIN_REDIRECT_URIS (space-separated). Listens on 127.0.0.1 (STANDIN_PORT,
default any free port) and prints ``READY <port>`` once it answers.
"""

from __future__ import annotations

import contextlib
import os
import sys
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "integrations.google.tests.standin.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.core.wsgi import get_wsgi_application
    from oauth2_provider.models import Application

    call_command("migrate", verbosity=0)
    Application.objects.update_or_create(
        client_id=os.environ["STANDIN_CLIENT_ID"],
        defaults={
            "name": "Safer-Claw",
            "client_secret": os.environ["STANDIN_CLIENT_SECRET"],
            "client_type": Application.CLIENT_CONFIDENTIAL,
            "authorization_grant_type": Application.GRANT_AUTHORIZATION_CODE,
            "redirect_uris": os.environ["STANDIN_REDIRECT_URIS"],
            "skip_authorization": False,
        },
    )
    server = make_server(
        "127.0.0.1",
        int(os.environ.get("STANDIN_PORT", "0")),
        get_wsgi_application(),
        server_class=_ThreadingServer,
        handler_class=_QuietHandler,
    )
    print(f"READY {server.server_port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    sys.exit(0)


if __name__ == "__main__":
    main()
