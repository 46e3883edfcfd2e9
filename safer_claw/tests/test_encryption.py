"""AES-256-GCM sealing: round trips, and every way a ciphertext must refuse to open."""

from __future__ import annotations

import pytest
from django.db import connection, transaction

from agents.models import Agent
from agents.tests.factories import AgentFactory
from safer_claw.encryption import (
    DecryptionError,
    KeyRingError,
    generate_key_entry,
    key_id_of,
    open_sealed,
    parse_key_ring,
    seal,
)
from safer_claw.fields import EncryptionError

RING = parse_key_ring(generate_key_entry("new") + "," + generate_key_entry("old"))


def raw_column(row, column: str = "ai_api_key") -> str | None:
    """The column exactly as stored, read with SQL that bypasses the ORM."""
    table = row._meta.db_table
    pk = row._meta.pk.get_db_prep_value(row.pk, connection)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM {table} WHERE id = %s", [pk])  # noqa: S608
        return cursor.fetchone()[0]


def write_raw_column(row, value: str, column: str = "ai_api_key") -> None:
    table = row._meta.db_table
    pk = row._meta.pk.get_db_prep_value(row.pk, connection)
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET {column} = %s WHERE id = %s", [value, pk])  # noqa: S608


def test_seal_round_trip_uses_newest_key():
    sealed = seal(b"sk-live-123", context="t.c.1", ring=RING)
    assert key_id_of(sealed) == "new"
    assert open_sealed(sealed, context="t.c.1", ring=RING) == b"sk-live-123"


def test_same_plaintext_seals_differently_each_time():
    assert seal(b"x", context="c", ring=RING) != seal(b"x", context="c", ring=RING)


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda s: s[:-1] + ("A" if s[-1] != "A" else "B"), "failed authentication"),
        (lambda s: s[:-10], "failed authentication"),
        (lambda s: s.split(":")[0] + ":" + s.split(":")[1] + ":AAAA", "truncated"),
        (lambda s: s[:20] + "!" + s[20:], "not valid base64"),
        (lambda s: s.replace("scv1:", "scv9:"), "unknown format"),
        (lambda s: "plaintext-api-key", "unknown format"),
        (lambda s: s.replace(":new:", ":old:"), "failed authentication"),
    ],
    ids=[
        "tampered",
        "truncated",
        "truncated-below-tag",
        "stray-char",
        "version",
        "clear",
        "key-id-swapped",
    ],
)
def test_damaged_ciphertext_raises_never_returns_garbage(mangle, message):
    sealed = seal(b"sk-live-123", context="t.c.1", ring=RING)
    with pytest.raises(DecryptionError, match=message):
        open_sealed(mangle(sealed), context="t.c.1", ring=RING)


def test_wrong_key_is_refused():
    sealed = seal(b"secret", context="c", ring=RING)
    other = parse_key_ring(generate_key_entry("new"))  # same id, different key
    with pytest.raises(DecryptionError, match="failed authentication"):
        open_sealed(sealed, context="c", ring=other)


def test_unknown_key_id_is_named_in_the_error():
    sealed = seal(b"secret", context="c", ring=RING)
    with pytest.raises(DecryptionError, match="'new', which is not in ENCRYPTION_KEYS"):
        open_sealed(sealed, context="c", ring=parse_key_ring(generate_key_entry("other")))


def test_value_sealed_for_another_context_does_not_open():
    sealed = seal(b"secret", context="agents_agent.ai_api_key.1", ring=RING)
    with pytest.raises(DecryptionError):
        open_sealed(sealed, context="agents_agent.ai_api_key.2", ring=RING)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("nokey", "id:base64key"),
        ("k1:" + "A" * 10, "bytes"),
        ("k1:" + "A" * 41 + "=", "base64"),
        ("bad id!:" + "A" * 43, "id:base64key"),
        (generate_key_entry("a") + "," + generate_key_entry("a"), "twice"),
    ],
)
def test_key_ring_rejects_nonsense(text, message):
    with pytest.raises(KeyRingError, match=message):
        parse_key_ring(text)


def test_key_ring_accepts_standard_and_urlsafe_base64():
    import base64

    key = bytes(range(32))
    ring = parse_key_ring(
        f"a:{base64.b64encode(key).decode()},b:{base64.urlsafe_b64encode(key).decode()}"
    )
    assert ring.key_ids == ("a", "b")


# --- The encrypted model field ------------------------------------------------------


@pytest.mark.django_db
def test_field_round_trip_and_no_plaintext_in_a_raw_select(alice):
    agent = AgentFactory(owner=alice, ai_api_key="sk-live-abcdef123456")
    agent.integrations_config = {"google": {"refresh_token": "1//refresh-xyz"}}
    agent.save()

    stored = raw_column(agent)
    assert stored.startswith("scv1:t2:")
    assert "sk-live-abcdef123456" not in stored
    assert "refresh-xyz" not in raw_column(agent, "integrations_config")

    fresh = Agent.objects.get(pk=agent.pk)
    assert fresh.ai_api_key == "sk-live-abcdef123456"
    assert fresh.integrations_config == {"google": {"refresh_token": "1//refresh-xyz"}}


@pytest.mark.django_db
def test_values_query_returns_ciphertext_not_plaintext(alice):
    agent = AgentFactory(owner=alice, ai_api_key="sk-live-abcdef123456")
    (value,) = Agent.objects.filter(pk=agent.pk).values_list("ai_api_key", flat=True)
    assert value.startswith("scv1:")


@pytest.mark.django_db
def test_ciphertext_moved_to_another_row_does_not_open(alice):
    victim = AgentFactory(owner=alice, ai_api_key="sk-victim")
    attacker = AgentFactory(owner=alice, ai_api_key="sk-attacker")
    write_raw_column(attacker, raw_column(victim))

    with pytest.raises(DecryptionError, match="belongs to another row"):
        _ = Agent.objects.get(pk=attacker.pk).ai_api_key


@pytest.mark.django_db
def test_ciphertext_moved_to_another_column_does_not_open(alice):
    agent = AgentFactory(owner=alice, ai_api_key='"json-looking"')
    write_raw_column(agent, raw_column(agent, "ai_api_key"), column="integrations_config")
    with pytest.raises(DecryptionError):
        _ = Agent.objects.get(pk=agent.pk).integrations_config


@pytest.mark.django_db
def test_tampered_row_raises_on_read(agent):
    stored = raw_column(agent)
    write_raw_column(agent, stored[:-2] + ("AA" if not stored.endswith("AA") else "BB"))
    with pytest.raises(DecryptionError):
        _ = Agent.objects.get(pk=agent.pk).ai_api_key


@pytest.mark.django_db
def test_plaintext_cannot_reach_the_database_through_update(agent):
    with (
        pytest.raises(EncryptionError, match="plaintext reached the database"),
        transaction.atomic(),
    ):
        Agent.objects.filter(pk=agent.pk).update(ai_api_key="sk-in-clear")
    assert raw_column(agent).startswith("scv1:")


@pytest.mark.django_db
def test_dumpdata_refuses_to_write_secrets_out(agent):
    from django.core import serializers

    with pytest.raises(EncryptionError, match="not serialised"):
        serializers.serialize("json", [agent])


@pytest.mark.django_db
def test_null_stays_null(alice):
    agent = AgentFactory(owner=alice, ai_api_key=None)
    assert raw_column(agent) is None
    assert Agent.objects.get(pk=agent.pk).ai_api_key is None
