"""A stand-in for Google on loopback, for the tests and the benchmark.

A real OAuth 2 authorization server (django-oauth-toolkit) configured like
Google: Google's scope strings, PKCE required (S256 only), refresh tokens not
rotated and not sent again on refresh, incremental authorization
(``include_granted_scopes``), and a revoke endpoint. Beside it, the Calendar,
Gmail and Drive endpoints the tools call, answering in Google's JSON and
accepting only the access tokens this server issued, for the scope each needs.

It runs as its own process (its own Django settings and SQLite database):
``python -m integrations.google.tests.standin.server``. See ``StandIn`` in
``integrations/google/tests/google.py`` for how tests drive it.
"""
