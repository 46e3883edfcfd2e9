"""Bind allauth's MFA secrets to their own rows.

They were sealed under one context shared by every user ("allauth.mfa"), so a
TOTP secret copied into another user's authenticator still opened. Each is
opened and sealed again, bound to its user, type and key, as
safer_claw.accounts.mfa_secrets does from now on (the rule is repeated here so
that this migration keeps meaning what it meant). A value that cannot be
opened stops the migration: put the key that sealed it back into
ENCRYPTION_KEYS first.
"""

from django.db import migrations

from safer_claw.encryption import DecryptionError, current_ring, open_sealed, seal

LEGACY_CONTEXT = "allauth.mfa"
SEALED_KEYS = ("secret", "seed")
SEALED_LIST_KEYS = ("migrated_codes",)


def bind_to_rows(apps, schema_editor):
    Authenticator = apps.get_model("mfa", "Authenticator")
    ring = current_ring()
    for authenticator in Authenticator.objects.order_by("pk").iterator():
        if not isinstance(authenticator.data, dict):
            continue
        data = dict(authenticator.data)

        def rebind(key, value, authenticator=authenticator):
            context = (
                f"{Authenticator._meta.db_table}.data."
                f"{authenticator.user_id}.{authenticator.type}.{key}"
            )
            try:
                plaintext = open_sealed(value, context=LEGACY_CONTEXT, ring=ring)
            except DecryptionError:
                try:
                    open_sealed(value, context=context, ring=ring)  # bound already
                except DecryptionError as exc:
                    raise RuntimeError(
                        f"MFA secret {key!r} of user {authenticator.user_id} cannot be "
                        f"opened: {exc}"
                    ) from exc
                return value
            return seal(plaintext, context=context, ring=ring)

        for key in SEALED_KEYS:
            if isinstance(data.get(key), str):
                data[key] = rebind(key, data[key])
        for key in SEALED_LIST_KEYS:
            if isinstance(data.get(key), list):
                data[key] = [rebind(key, v) if isinstance(v, str) else v for v in data[key]]
        if data != authenticator.data:
            Authenticator.objects.filter(pk=authenticator.pk).update(data=data)


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0002_api_tokens_expire"),
        ("mfa", "0003_authenticator_type_uniq"),
    ]

    operations = [migrations.RunPython(bind_to_rows, migrations.RunPython.noop)]
