"""Failed logins are throttled per client IP and per client IP + account: an attacker
is cut off, but cannot use the throttle to lock the owner out of their account."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from safer_claw.accounts.tests.factories import PASSWORD

pytestmark = pytest.mark.django_db

ATTACKER_IP = "203.0.113.66"
OWNER_IP = "198.51.100.7"
THROTTLED = "Too many failed login attempts"


def attempt(client: Client, email: str, password: str) -> str:
    """One login POST: "in", "wrong" (the form again) or "throttled"."""
    response = client.post(reverse("account_login"), {"login": email, "password": password})
    if response.status_code == 302 and response["Location"] == reverse("dashboard:home"):
        return "in"
    assert response.status_code == 200
    return "throttled" if THROTTLED in response.content.decode() else "wrong"


def test_an_attacker_gets_five_guesses_and_the_owner_still_signs_in(alice):
    attacker = Client(REMOTE_ADDR=ATTACKER_IP)
    outcomes = [attempt(attacker, alice.email, f"guess-{n}") for n in range(8)]
    # Measurable: five wrong passwords per 5 minutes from one client for one account.
    assert outcomes == ["wrong"] * 5 + ["throttled"] * 3
    # Now even the right password from the attacker's address is refused unchecked.
    assert attempt(attacker, alice.email, PASSWORD) == "throttled"
    assert attacker.get(reverse("dashboard:home")).status_code == 302

    # During the attack the owner, from another address, signs in at the first try.
    owner = Client(REMOTE_ADDR=OWNER_IP)
    assert attempt(owner, alice.email, PASSWORD) == "in"
    assert owner.get(reverse("dashboard:home")).status_code == 200


def test_one_address_is_throttled_across_accounts(alice, bob):
    """Spraying one password over many accounts from one address is cut off too."""
    attacker = Client(REMOTE_ADDR=ATTACKER_IP)
    emails = [f"user{n}@example.com" for n in range(12)]
    outcomes = [attempt(attacker, email, "Summer2026!") for email in emails]
    assert outcomes == ["wrong"] * 10 + ["throttled"] * 2  # 10 failures a minute per IP
    assert attempt(attacker, bob.email, PASSWORD) == "throttled"
    assert attempt(Client(REMOTE_ADDR=OWNER_IP), bob.email, PASSWORD) == "in"


def test_rotating_addresses_within_one_ipv6_network_does_not_reset_the_count(alice):
    outcomes = [
        attempt(Client(REMOTE_ADDR=f"2001:db8:1:2::{n:x}"), alice.email, f"guess-{n}")
        for n in range(1, 8)
    ]
    assert outcomes == ["wrong"] * 5 + ["throttled"] * 2
    assert attempt(Client(REMOTE_ADDR="2001:db8:9:9::1"), alice.email, PASSWORD) == "in"


def test_a_successful_login_does_not_wipe_the_attackers_count(alice):
    """allauth rolls back only the successful attempt: an owner signing in between
    guesses does not hand the attacker a fresh budget."""
    attacker = Client(REMOTE_ADDR=ATTACKER_IP)
    for n in range(4):
        assert attempt(attacker, alice.email, f"guess-{n}") == "wrong"
    assert attempt(Client(REMOTE_ADDR=OWNER_IP), alice.email, PASSWORD) == "in"
    assert attempt(attacker, alice.email, "guess-4") == "wrong"
    assert attempt(attacker, alice.email, "guess-5") == "throttled"
