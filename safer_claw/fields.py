"""Model fields whose values are sealed with AES-256-GCM in the database.

Code reads and assigns plaintext (``agent.ai_api_key = "sk-…"``); the field seals
it on save, bound to its table, column and row id, and opens it lazily on first
read. The row id must exist before the first save, so models that use these
fields take UUID primary keys made in Python.

What comes out of the database unopened (``values()``, raw SQL) is ciphertext.
Plaintext can reach the database only through ``Model.save()``: a queryset
``update()`` or lookup with plaintext raises instead of storing it in clear.
"""

from __future__ import annotations

import json
from typing import Any

from django.db import models
from django.db.models.query_utils import DeferredAttribute
from django.views.decorators.debug import sensitive_variables

from safer_claw.encryption import EncryptionError, current_ring, open_sealed, seal


class Sealed(str):
    """A ciphertext exactly as stored; the field's descriptor opens it on read."""

    __slots__ = ()


class _EncryptedAttribute(DeferredAttribute):
    # A data descriptor (it defines __set__), so reads come here even when the
    # value sits in the instance __dict__; Django's DeferredAttribute alone would
    # be bypassed then and hand out the ciphertext.
    def __set__(self, instance: models.Model, value: Any) -> None:
        instance.__dict__[self.field.attname] = value

    @sensitive_variables("value")
    def __get__(self, instance: models.Model | None, cls: type | None = None) -> Any:
        if instance is None:
            return self
        value = super().__get__(instance, cls)
        if isinstance(value, Sealed):
            value = self.field.open(instance, value)
            instance.__dict__[self.field.attname] = value
        return value


class EncryptedTextField(models.TextField):
    """A text secret, sealed at rest and bound to its row."""

    descriptor_class = _EncryptedAttribute

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("null", True)
        kwargs.setdefault("blank", True)
        super().__init__(*args, **kwargs)

    # Plaintext <-> bytes; the JSON variant overrides these two.
    def encode(self, value: Any) -> bytes:
        return str(value).encode()

    def decode(self, data: bytes) -> Any:
        return data.decode()

    def context_for(self, instance: models.Model) -> str:
        if instance.pk is None:
            raise EncryptionError(
                f"{type(instance).__name__} needs its primary key set before "
                f"{self.name} can be sealed (use a UUID primary key made in Python)"
            )
        return self.context_for_pk(instance.pk)

    def context_for_pk(self, pk: Any) -> str:
        """The associated data that binds a value to this column of row ``pk``."""
        return f"{self.model._meta.db_table}.{self.column}.{pk}"

    def open_for_pk(self, pk: Any, sealed: str) -> Any:
        """Open a value read without the ORM (it is still bound to its row)."""
        return self.decode(
            open_sealed(sealed, context=self.context_for_pk(pk), ring=current_ring())
        )

    @sensitive_variables("value")
    def seal_for(self, instance: models.Model, value: Any) -> Sealed:
        context = self.context_for(instance)
        return Sealed(seal(self.encode(value), context=context, ring=current_ring()))

    def open(self, instance: models.Model, sealed: str) -> Any:
        context = self.context_for(instance)
        return self.decode(open_sealed(sealed, context=context, ring=current_ring()))

    def sealed_value(self, instance: models.Model) -> Sealed | None:
        """The ciphertext as loaded from the database, without opening it."""
        value = instance.__dict__.get(self.attname)
        return value if isinstance(value, Sealed) else None

    @sensitive_variables("value")
    def pre_save(self, model_instance: models.Model, add: bool) -> Sealed | None:
        # Reading through the descriptor opens (and so verifies) what was loaded;
        # re-sealing on every save keeps values on the newest key.
        value = getattr(model_instance, self.attname)
        if value is None:
            return None
        return self.seal_for(model_instance, value)

    def from_db_value(self, value: str | None, expression: Any, connection: Any) -> Sealed | None:
        return None if value is None else Sealed(value)

    def get_prep_value(self, value: Any) -> str | None:
        if value is None or isinstance(value, Sealed):
            return value
        raise EncryptionError(
            f"plaintext reached the database for encrypted field {self.name}: "
            "assign it on the instance and call save() instead"
        )

    def value_to_string(self, obj: models.Model) -> str:
        # dumpdata would otherwise write the secret out in clear.
        raise EncryptionError(f"{self.name} is encrypted and is not serialised")


class EncryptedJSONField(EncryptedTextField):
    """A JSON document (dict, list, …) sealed at rest as one value."""

    def encode(self, value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()

    def decode(self, data: bytes) -> Any:
        return json.loads(data)
