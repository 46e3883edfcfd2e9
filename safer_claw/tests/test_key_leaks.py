"""No encryption key on an error page, in an error report, a repr or a log line.

The failing request is a real one: an agent whose provider key cannot be
opened answers its owner's ``GET /api/agents/<id>/`` with a 500, and the
traceback runs through the decryption code with the key ring in its frames.
"""

from __future__ import annotations

import base64
import html
import logging
import os
import sys

import pytest
from django.test import Client
from django.views.debug import ExceptionReporter
from knox.models import AuthToken

from agents.tests.factories import AgentFactory
from safer_claw.encryption import (
    KeyRingError,
    current_ring,
    generate_key_entry,
    parse_key_ring,
)
from safer_claw.tests.test_encryption import raw_column, write_raw_column


def key_material(ring_text: str) -> list[str]:
    """Every form a key of ``ring_text`` could take in a page or a log."""
    forms = []
    for entry in ring_text.split(","):
        encoded = entry.split(":", 1)[1]
        raw = base64.urlsafe_b64decode(encoded.replace("+", "-").replace("/", "_"))
        for text in (
            encoded.rstrip("="),
            base64.b64encode(raw).decode().rstrip("="),
            base64.urlsafe_b64encode(raw).decode().rstrip("="),
            raw.hex(),
            repr(raw),
            repr(raw)[2:-1],  # the bytes' repr without b'…', as inside a tuple's repr
        ):
            forms += [text, html.escape(text)]
    return forms


def assert_no_key_material(text: str, ring_text: str) -> None:
    leaked = [form for form in key_material(ring_text) if form in text]
    assert not leaked, f"key material in the output: {leaked[0][:24]}…"


@pytest.fixture
def broken_agent(alice):
    """Alice's agent whose provider key no longer opens (its ciphertext was altered)."""
    agent = AgentFactory(owner=alice, ai_api_key="sk-live-owner-key")
    stored = raw_column(agent)
    write_raw_column(agent, stored[:-4] + ("AAAA" if not stored.endswith("AAAA") else "BBBB"))
    return agent


def failing_request(alice, agent) -> tuple[Client, object]:
    client = Client(raise_request_exception=False)
    token = AuthToken.objects.create(alice)[1]
    response = client.get(f"/api/agents/{agent.id}/", headers={"Authorization": f"Token {token}"})
    return client, response


@pytest.mark.django_db
def test_the_debug_500_page_of_a_failed_decryption_shows_no_key(settings, alice, broken_agent):
    settings.DEBUG = True
    _, response = failing_request(alice, broken_agent)

    assert response.status_code == 500
    page = response.content.decode()
    # It is the technical page, with the frames of the decryption and their locals.
    assert "DecryptionError" in page
    assert "open_sealed" in page
    assert "Local vars" in page
    assert_no_key_material(page, os.environ["ENCRYPTION_KEYS"])


@pytest.mark.django_db
def test_the_error_report_of_a_failed_decryption_shows_no_key(settings, alice, broken_agent):
    """With DEBUG off, what AdminEmailHandler mails (text and HTML) holds no key either."""
    settings.DEBUG = False
    client = Client()
    token = AuthToken.objects.create(alice)[1]
    request = client.get("/").wsgi_request  # any request: the report's request section
    try:
        client.raise_request_exception = True
        client.get(f"/api/agents/{broken_agent.id}/", headers={"Authorization": f"Token {token}"})
    except Exception:
        exc_info = sys.exc_info()
    else:
        pytest.fail("the request did not fail")
    reporter = ExceptionReporter(request, *exc_info)
    for text in (reporter.get_traceback_text(), reporter.get_traceback_html()):
        assert "open_sealed" in text
        assert_no_key_material(text, os.environ["ENCRYPTION_KEYS"])


def test_a_key_ring_repr_names_its_key_ids_only():
    text = generate_key_entry("new") + "," + generate_key_entry("old")
    ring = parse_key_ring(text)
    shown = repr(ring) + str(ring) + repr(vars(ring)) + repr([ring])
    assert "'new'" in shown
    assert "'old'" in shown
    assert_no_key_material(shown, text)


def test_parsing_a_ring_logs_nothing_and_a_bad_ring_error_names_no_key(caplog):
    good = generate_key_entry("k1")
    short = "k2:" + base64.urlsafe_b64encode(b"x" * 16).decode()
    caplog.set_level(logging.DEBUG)
    parse_key_ring(good)
    with pytest.raises(KeyRingError, match="key 'k2' is 16 bytes") as excinfo:
        parse_key_ring(f"{good},{short}")
    assert_no_key_material(str(excinfo.value) + repr(excinfo.value) + caplog.text, good)
    assert_no_key_material(str(excinfo.value), short)


@pytest.mark.django_db
def test_the_current_ring_opens_what_it_seals_without_exposing_keys(alice):
    agent = AgentFactory(owner=alice, ai_api_key="sk-x")
    assert agent.ai_api_key == "sk-x"
    assert_no_key_material(repr(current_ring()), os.environ["ENCRYPTION_KEYS"])


def test_the_error_report_of_a_bad_key_ring_hides_the_keys_it_was_reading(settings):
    """The frames that parse a ring hold its text and key bytes: reports hide them."""
    settings.DEBUG = False
    good = generate_key_entry("k1")
    short = "k2:" + base64.urlsafe_b64encode(b"y" * 16).decode()
    try:
        parse_key_ring(f"{good},{short}")
    except ValueError:
        exc_info = sys.exc_info()
    frames = ExceptionReporter(None, *exc_info).get_traceback_frames()
    # This test's own frame holds the text too; the report's frames of the parser must not.
    ours = [f for f in frames if f["filename"].endswith("safer_claw/encryption.py")]
    assert [f["function"] for f in ours] == ["parse_key_ring", "_decode_key"]
    for frame in ours:
        shown = repr(frame["vars"])
        assert "********************" in shown  # the locals are there, cleansed
        assert_no_key_material(shown, good)
        assert_no_key_material(shown, short)
