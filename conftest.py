"""Fixtures shared by every app's tests: two users (alice and bob) and a droplet."""

from __future__ import annotations

import pytest

from agents.services import create_agent
from droplets.tests.factories import DropletFactory
from safer_claw.accounts.tests.factories import UserFactory
from safer_claw.accounts.tests.helpers import enable_totp, sign_in

pytest_plugins = ["droplets.tests.fixtures"]


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Rate-limit counters live in the cache; no test inherits another's."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def alice(db):
    return UserFactory(email="alice@example.com")


@pytest.fixture
def bob(db):
    return UserFactory(email="bob@example.com")


@pytest.fixture
def admin_user(db):
    """pytest-django's, as the product makes one: a verified email address and an
    authenticator app (staff without one reach nothing but its setup)."""
    return UserFactory(email="admin@example.com", is_staff=True, is_superuser=True)


@pytest.fixture
def admin_client(admin_user):
    """Signed in as an operator is: the login page, then the authenticator's code."""
    from django.test import Client

    client = Client()
    sign_in(client, admin_user, totp_secret=enable_totp(admin_user))
    return client


@pytest.fixture
def droplet(db):
    return DropletFactory()


@pytest.fixture
def agent(alice):
    """Alice's agent, made the way the product makes one (with its "created" event),
    and paid for: only an agent whose billing is active may be deployed."""
    agent = create_agent(owner=alice, name="helper", provider_key="sk-test-provider-key-alice")
    type(agent).objects.filter(pk=agent.pk).update(billing_active=True)
    agent.billing_active = True
    return agent
