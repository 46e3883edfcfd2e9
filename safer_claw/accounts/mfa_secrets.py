"""allauth's MFA secrets, sealed like every other secret and bound to their own row.

allauth asks its adapter to encrypt a secret before the ``Authenticator`` row
exists, and to decrypt a value without saying which row it came from. So:

- ``seal_pending`` (the adapter's ``encrypt``) seals the secret under a
  "pending" context and marks it ``PendingSeal``;
- when the row is saved, each pending value is opened and sealed again,
  bound to the row: its user, its type (allauth keeps one TOTP authenticator
  and one set of recovery codes per user) and its key in ``data``;
- when a row is loaded, each sealed value is marked ``BoundSealed`` with the
  context of the row it was read from, and ``open_value`` (the adapter's
  ``decrypt``) opens it for that row only.

A ciphertext copied into another user's row does not open; ``save()`` refuses
a value that does not open for its row (plaintext put there by hand
included); a pending value that reached the database without ``save()``
opens nowhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from allauth.mfa.models import Authenticator
from django.db.models.signals import post_init, pre_save
from django.dispatch import receiver
from django.views.decorators.debug import sensitive_variables

from safer_claw.encryption import DecryptionError, current_ring, open_sealed, seal

# The keys of Authenticator.data that allauth fills with encrypt(): single
# values, and lists of values.
SEALED_KEYS = ("secret", "seed")
SEALED_LIST_KEYS = ("migrated_codes",)
PENDING_CONTEXT = "mfa_authenticator.pending"
# Before values were bound to their rows (undone by accounts migration 0002).
LEGACY_CONTEXT = "allauth.mfa"


class PendingSeal(str):
    """Sealed by ``encrypt`` for a row that is not saved yet."""

    __slots__ = ()

    def __reduce__(self) -> tuple:
        return (PendingSeal, (str(self),))


class BoundSealed(str):
    """A sealed value as read from a row, with the context that row binds it to."""

    __slots__ = ("context",)

    def __new__(cls, value: str, context: str) -> BoundSealed:
        instance = super().__new__(cls, value)
        instance.context = context
        return instance

    def __reduce__(self) -> tuple:
        return (BoundSealed, (str(self), self.context))


def row_context(*, table: str, user_id: Any, kind: str, key: str) -> str:
    """The associated data that binds a value under ``key`` to one user's authenticator."""
    return f"{table}.data.{user_id}.{kind}.{key}"


def context_for(authenticator: Authenticator, key: str) -> str:
    return row_context(
        table=Authenticator._meta.db_table,
        user_id=authenticator.user_id,
        kind=authenticator.type,
        key=key,
    )


@sensitive_variables("text")
def seal_pending(text: str) -> PendingSeal:
    return PendingSeal(seal(text.encode(), context=PENDING_CONTEXT, ring=current_ring()))


def open_value(value: str) -> str:
    """The plaintext of a value from ``Authenticator.data``, for the row it came from."""
    if isinstance(value, BoundSealed):
        context = value.context
    elif isinstance(value, PendingSeal):
        context = PENDING_CONTEXT
    else:
        raise DecryptionError("an MFA secret was given without the row it belongs to")
    return open_sealed(value, context=context, ring=current_ring()).decode()


def map_sealed(data: Any, change: Callable[[str, str], str]) -> Any:
    """``data`` with ``change(key, value)`` applied to each sealed value in it."""
    if not isinstance(data, dict):
        return data
    changed = dict(data)
    for key in SEALED_KEYS:
        if isinstance(changed.get(key), str):
            changed[key] = change(key, changed[key])
    for key in SEALED_LIST_KEYS:
        if isinstance(changed.get(key), list):
            changed[key] = [change(key, v) if isinstance(v, str) else v for v in changed[key]]
    return changed


def sealed_values(data: Any) -> Iterator[str]:
    """Every sealed value in an authenticator's ``data``."""
    if not isinstance(data, dict):
        return
    for key in SEALED_KEYS:
        if isinstance(data.get(key), str):
            yield data[key]
    for key in SEALED_LIST_KEYS:
        if isinstance(data.get(key), list):
            yield from (value for value in data[key] if isinstance(value, str))


@receiver(post_init, sender=Authenticator)
def _bind_loaded_values(sender: type, instance: Authenticator, **kwargs: Any) -> None:
    if "data" in instance.get_deferred_fields() or instance.data is None:
        return

    def bind(key: str, value: str) -> str:
        if isinstance(value, PendingSeal | BoundSealed):
            return value
        return BoundSealed(value, context_for(instance, key))

    instance.data = map_sealed(instance.data, bind)


@receiver(pre_save, sender=Authenticator)
def _seal_for_the_row(sender: type, instance: Authenticator, **kwargs: Any) -> None:
    """Seal pending values for this row; refuse any value that does not open for it.

    So plaintext, or a ciphertext of another row, never reaches the database
    through ``save()``.
    """
    update_fields = kwargs.get("update_fields")
    if update_fields is not None and "data" not in update_fields:
        return
    ring = current_ring()

    @sensitive_variables("plaintext")
    def bind(key: str, value: str) -> str:
        context = context_for(instance, key)
        if not isinstance(value, PendingSeal | BoundSealed):
            value = BoundSealed(value, context)  # assigned by hand: it must open here
        try:
            plaintext = open_value(value)
        except DecryptionError as exc:
            raise DecryptionError(
                f"Authenticator.data[{key!r}] does not open for this authenticator; "
                "refusing to store it"
            ) from exc
        if isinstance(value, BoundSealed) and value.context == context:
            return value
        return BoundSealed(seal(plaintext.encode(), context=context, ring=ring), context)

    instance.data = map_sealed(instance.data, bind)
