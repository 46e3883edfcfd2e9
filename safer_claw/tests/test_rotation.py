"""rotate_encryption_keys: a populated table moves to the newest key, resumably."""

from __future__ import annotations

import io
import os
import threading
import time

import pytest
from allauth.mfa.adapter import get_adapter
from allauth.mfa.models import Authenticator
from allauth.mfa.recovery_codes.internal.auth import RecoveryCodes
from allauth.mfa.totp.internal.auth import TOTP
from django.core.management import CommandError, call_command
from django.db import connection

from agents.models import Agent
from agents.tests.factories import AgentFactory
from droplets.models import Droplet
from droplets.tests.factories import DropletFactory
from safer_claw.encryption import open_sealed, parse_key_ring, seal
from safer_claw.rotation import rotate_column
from safer_claw.tests.test_encryption import raw_column, write_raw_column

T2, T1 = os.environ["ENCRYPTION_KEYS"].split(",")  # the test ring: t2 newest, t1 older


class Interrupted(Exception):
    pass


@pytest.fixture
def populated_on_t1(settings, alice):
    """25 agents and a droplet, all sealed while t1 was the newest key."""
    settings.ENCRYPTION_KEYS = T1
    agents = [AgentFactory(owner=alice, ai_api_key=f"sk-key-{i:02d}") for i in range(25)]
    for agent in agents[:5]:
        agent.integrations_config = {"google": {"refresh_token": f"r-{agent.name}"}}
        agent.save()
    droplet = DropletFactory(tls_client_key="-----PRIVATE KEY-----\nfake")
    TOTP.activate(alice, "JBSWY3DPEHPK3PXP")
    RecoveryCodes.activate(alice)
    settings.ENCRYPTION_KEYS = f"{T2},{T1}"
    return agents, droplet


def mfa_values() -> list[str]:
    """Every sealed MFA value as stored: TOTP secrets and recovery-code seeds."""
    values = []
    for data in Authenticator.objects.order_by("type").values_list("data", flat=True):
        values += [data[key] for key in ("secret", "seed") if key in data]
    return values


def test_rotation_reseals_every_column_with_the_newest_key(settings, populated_on_t1):
    agents, droplet = populated_on_t1
    out = io.StringIO()
    call_command("rotate_encryption_keys", "--batch-size", "10", stdout=out)

    assert "agents.Agent.ai_api_key: 25 re-encrypted" in out.getvalue()
    assert "agents.Agent.integrations_config: 5 re-encrypted" in out.getvalue()
    assert "droplets.Droplet.tls_client_key: 1 re-encrypted" in out.getvalue()
    assert all(raw_column(a).startswith("scv1:t2:") for a in agents)
    assert raw_column(droplet, "tls_client_key").startswith("scv1:t2:")
    assert "mfa.Authenticator.data: 2 re-encrypted" in out.getvalue()
    assert [value[:8] for value in mfa_values()] == ["scv1:t2:"] * 2
    assert "nothing is left on an older key" in out.getvalue()
    codes = RecoveryCodes(Authenticator.objects.get(type="recovery_codes")).get_unused_codes()

    settings.ENCRYPTION_KEYS = T2  # the old key can now leave the ring
    assert sorted(a.ai_api_key for a in Agent.objects.all()) == [
        f"sk-key-{i:02d}" for i in range(25)
    ]
    assert Droplet.objects.get().tls_client_key == "-----PRIVATE KEY-----\nfake"
    totp = Authenticator.objects.get(type="totp")
    assert get_adapter().decrypt(totp.data["secret"]) == "JBSWY3DPEHPK3PXP"
    recovery = RecoveryCodes(Authenticator.objects.get(type="recovery_codes"))
    assert recovery.get_unused_codes() == codes
    assert recovery.validate_code(codes[0])


def test_rotation_resumes_after_an_interruption(populated_on_t1):
    agents, _ = populated_on_t1
    field = Agent._meta.get_field("ai_api_key")

    def stop_after_first_batch(report):
        raise Interrupted

    with pytest.raises(Interrupted):
        rotate_column(Agent, field, batch_size=10, progress=stop_after_first_batch)
    on_new_key = sum(raw_column(a).startswith("scv1:t2:") for a in agents)
    assert on_new_key == 10

    out = io.StringIO()
    call_command("rotate_encryption_keys", stdout=out)
    assert "agents.Agent.ai_api_key: 15 re-encrypted" in out.getvalue()
    assert all(raw_column(a).startswith("scv1:t2:") for a in agents)


def test_dry_run_counts_every_value_on_an_older_key_mfa_secrets_included(populated_on_t1):
    agents, _ = populated_on_t1
    out = io.StringIO()

    with pytest.raises(CommandError) as refused:
        call_command("rotate_encryption_keys", "--dry-run", stdout=out)

    assert "agents.Agent.ai_api_key: 25 value(s) on an older key" in out.getvalue()
    assert "agents.Agent.integrations_config: 5 value(s) on an older key" in out.getvalue()
    assert "droplets.Droplet.tls_client_key: 1 value(s) on an older key" in out.getvalue()
    # The TOTP secret and the recovery-code seed.
    assert "mfa.Authenticator.data: 2 value(s) on an older key" in out.getvalue()
    assert "33 value(s) still on an older key" in str(refused.value)
    assert "mfa.Authenticator.data: 2" in str(refused.value)
    assert "Done" not in out.getvalue()
    assert all(raw_column(a).startswith("scv1:t1:") for a in agents)
    assert [value[:8] for value in mfa_values()] == ["scv1:t1:"] * 2


def test_dry_run_says_when_nothing_is_left(populated_on_t1):
    call_command("rotate_encryption_keys", stdout=io.StringIO())
    out = io.StringIO()
    call_command("rotate_encryption_keys", "--dry-run", stdout=out)
    assert "mfa.Authenticator.data: 0 value(s) on an older key" in out.getvalue()
    assert "nothing is left on an older key" in out.getvalue()


def test_a_dry_run_sees_an_mfa_secret_left_on_an_older_key(settings, alice):
    """The MFA secrets alone keep an old key in use: the dry run must say so."""
    settings.ENCRYPTION_KEYS = T1
    TOTP.activate(alice, "JBSWY3DPEHPK3PXP")
    settings.ENCRYPTION_KEYS = f"{T2},{T1}"
    with pytest.raises(CommandError, match=r"1 value\(s\) still on an older key"):
        call_command("rotate_encryption_keys", "--dry-run", stdout=io.StringIO())


@pytest.mark.django_db(transaction=True)
def test_rotation_refuses_to_say_done_while_a_value_is_left_on_an_older_key(
    settings, populated_on_t1, other_session
):
    """A web worker still on the old ring seals a value while the rotation runs."""
    agents, _ = populated_on_t1
    late = agents[0]
    # Hold the TOTP row, so the rotation waits there once the columns are done.
    totp = Authenticator.objects.get(type="totp")
    other_session.execute("SELECT 1 FROM mfa_authenticator WHERE id = %s FOR UPDATE", [totp.pk])
    outcome: list[BaseException | str] = []

    def rotate() -> None:
        out = io.StringIO()
        try:
            call_command("rotate_encryption_keys", stdout=out)
            outcome.append(out.getvalue())
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)
        finally:
            connection.close()

    worker = threading.Thread(target=rotate)
    worker.start()
    try:
        wait_for_a_lock_wait(other_session)
        assert raw_column(late).startswith("scv1:t2:")  # the columns are done
        old_ring = parse_key_ring(T1)
        context = Agent._meta.get_field("ai_api_key").context_for(late)
        write_raw_column(late, seal(b"sk-late", context=context, ring=old_ring))
    finally:
        other_session.rollback()
        worker.join(timeout=60)

    (result,) = outcome
    assert isinstance(result, CommandError), result
    assert "1 value(s) still on an older key (agents.Agent.ai_api_key: 1)" in str(result)
    assert open_sealed(raw_column(late), context=context, ring=old_ring) == b"sk-late"


def wait_for_a_lock_wait(session, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        (waiting,) = session.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database()"
        ).fetchone()
        if waiting:
            return
        time.sleep(0.01)
    raise AssertionError("the rotation never reached the held row")


@pytest.fixture
def other_session(settings):
    import psycopg

    db = settings.DATABASES["default"]
    with psycopg.connect(
        dbname=connection.settings_dict["NAME"],
        user=db.get("USER") or None,
        password=db.get("PASSWORD") or None,
        host=db.get("HOST") or None,
        port=db.get("PORT") or None,
    ) as session:
        yield session


def test_rotation_stops_with_a_clear_error_on_a_value_it_cannot_open(settings, populated_on_t1):
    settings.ENCRYPTION_KEYS = T2  # t1 removed before rotating: nothing can be opened
    with pytest.raises(CommandError, match="not in ENCRYPTION_KEYS"):
        call_command("rotate_encryption_keys", stdout=io.StringIO())
