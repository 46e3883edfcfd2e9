"""allauth's MFA secrets are sealed, bound to their own row, and migrated to that binding."""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib
import struct
import time

import pytest
from allauth.mfa.adapter import get_adapter
from allauth.mfa.models import Authenticator
from allauth.mfa.recovery_codes.internal.auth import RecoveryCodes
from allauth.mfa.totp.internal.auth import TOTP
from django.apps import apps

from safer_claw.encryption import DecryptionError, current_ring, open_sealed, seal

SECRET = "JBSWY3DPEHPK3PXP"
binding = importlib.import_module(
    "safer_claw.accounts.migrations.0003_bind_mfa_secrets_to_their_rows"
)


def code_for(secret: str) -> str:
    """The current RFC 6238 code (SHA-1, 30 s, 6 digits), computed here, not by allauth."""
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    digest = hmac.new(key, struct.pack(">Q", int(time.time() // 30)), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    code = (struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF) % 1_000_000
    return f"{code:06d}"


def stored(user, kind: str = "totp") -> dict:
    return Authenticator.objects.filter(user=user, type=kind).values_list("data", flat=True).get()


def write_data(user, data: dict, kind: str = "totp") -> None:
    Authenticator.objects.filter(user=user, type=kind).update(data=data)


@pytest.mark.django_db
def test_a_totp_secret_is_sealed_and_works(alice):
    TOTP.activate(alice, SECRET)
    assert stored(alice)["secret"].startswith("scv1:t2:")
    assert SECRET not in str(stored(alice))
    assert TOTP(Authenticator.objects.get(user=alice)).validate_code(code_for(SECRET))


@pytest.mark.django_db
def test_a_totp_secret_copied_into_another_users_row_does_not_open(alice, bob):
    TOTP.activate(alice, SECRET)
    TOTP.activate(bob, "KRSXG5CTMVRXEZLU")
    write_data(bob, {"secret": stored(alice)["secret"]})  # someone with database access

    bobs = TOTP(Authenticator.objects.get(user=bob))
    with pytest.raises(DecryptionError, match="another row or column"):
        bobs.validate_code(code_for(SECRET))


@pytest.mark.django_db
def test_a_recovery_seed_copied_into_another_users_row_does_not_open(alice, bob):
    alices = RecoveryCodes.activate(alice)
    RecoveryCodes.activate(bob)
    write_data(bob, stored(alice, "recovery_codes"), "recovery_codes")
    with pytest.raises(DecryptionError):
        RecoveryCodes(Authenticator.objects.get(user=bob, type="recovery_codes")).validate_code(
            alices.generate_codes()[0]
        )


@pytest.mark.django_db
def test_recovery_codes_work_and_are_used_once(alice):
    codes = RecoveryCodes.activate(alice).generate_codes()
    again = RecoveryCodes(Authenticator.objects.get(user=alice, type="recovery_codes"))
    assert again.get_unused_codes() == codes
    assert again.validate_code(codes[0])
    reloaded = RecoveryCodes(Authenticator.objects.get(user=alice, type="recovery_codes"))
    assert not reloaded.validate_code(codes[0])
    assert reloaded.get_unused_codes() == codes[1:]


@pytest.mark.django_db
def test_migrated_recovery_codes_are_sealed_and_bound_too(alice, bob):
    adapter = get_adapter()
    Authenticator(
        user=alice,
        type=Authenticator.Type.RECOVERY_CODES,
        data={"migrated_codes": [adapter.encrypt("12345678"), adapter.encrypt("87654321")]},
    ).save()
    data = stored(alice, "recovery_codes")
    assert all(code.startswith("scv1:t2:") for code in data["migrated_codes"])
    loaded = RecoveryCodes(Authenticator.objects.get(user=alice, type="recovery_codes"))
    assert loaded.get_unused_codes() == ["12345678", "87654321"]

    Authenticator.objects.create(user=bob, type="recovery_codes", data={"used_mask": 0})
    write_data(bob, data, "recovery_codes")
    with pytest.raises(DecryptionError):
        RecoveryCodes(Authenticator.objects.get(user=bob, type="recovery_codes")).get_unused_codes()


@pytest.mark.django_db
def test_plaintext_or_another_rows_value_is_never_saved(alice, bob):
    with pytest.raises(DecryptionError, match="refusing to store it"):
        Authenticator(user=alice, type="totp", data={"secret": SECRET}).save()
    TOTP.activate(bob, SECRET)
    copied = Authenticator.objects.values_list("data", flat=True).get(user=bob)
    with pytest.raises(DecryptionError, match="refusing to store it"):
        Authenticator(user=alice, type="totp", data=dict(copied)).save()
    assert not Authenticator.objects.filter(user=alice).exists()


@pytest.mark.django_db
def test_the_migration_binds_existing_secrets_to_their_rows(alice, bob):
    """Values sealed before (one context for every user) are sealed again for their row."""
    ring = current_ring()
    TOTP.activate(alice, SECRET)
    RecoveryCodes.activate(alice)
    TOTP.activate(bob, "KRSXG5CTMVRXEZLU")
    legacy = {}
    for user, kind, key, plaintext in (
        (alice, "totp", "secret", SECRET),
        (alice, "recovery_codes", "seed", "a" * 80),
        (bob, "totp", "secret", "KRSXG5CTMVRXEZLU"),
    ):
        data = dict(stored(user, kind))
        data[key] = seal(plaintext.encode(), context="allauth.mfa", ring=ring)
        write_data(user, data, kind)
        legacy[(user.pk, kind)] = data[key]

    binding.bind_to_rows(apps, None)

    for (user_id, kind), old in legacy.items():
        new = stored(user_id, kind)["secret" if kind == "totp" else "seed"]
        assert new != old
        with pytest.raises(DecryptionError):
            open_sealed(new, context="allauth.mfa", ring=ring)
    assert TOTP(Authenticator.objects.get(user=alice, type="totp")).validate_code(code_for(SECRET))
    codes = RecoveryCodes(Authenticator.objects.get(user=alice, type="recovery_codes"))
    assert codes.get_unused_codes()  # the seed opens for its row
    # Run again, it changes nothing; and a copy into another row still does not open.
    before = stored(alice)
    binding.bind_to_rows(apps, None)
    assert stored(alice) == before
    write_data(bob, before)
    with pytest.raises(DecryptionError):
        TOTP(Authenticator.objects.get(user=bob)).validate_code(code_for(SECRET))


@pytest.mark.django_db
def test_the_migration_stops_on_a_secret_it_cannot_open(alice, settings):
    TOTP.activate(alice, SECRET)
    write_data(alice, {"secret": "scv1:gone:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"})
    with pytest.raises(RuntimeError, match=f"'secret' of user {alice.pk} cannot be opened"):
        binding.bind_to_rows(apps, None)
