"""AES-256-GCM sealing of secrets kept in the database.

A sealed value is text: ``scv1:<key id>:<base64url(nonce || ciphertext || tag)>``.
The key id names the key in the ring that sealed it, so keys can rotate: new
values are always sealed with the newest key, older keys stay in the ring only
to open what they sealed until ``rotate_encryption_keys`` has re-sealed it.

Every value is bound to a *context* (table, column and row id) through GCM's
associated data, so a ciphertext copied into another row or column does not
open. Opening never returns garbage: anything altered, truncated, sealed under
an unknown key or moved raises :class:`DecryptionError`.

Keys never show: the ring keeps only the AES-GCM ciphers made from them (its
repr names key ids), and the functions that hold a key or its text in a local
variable are marked ``sensitive_variables`` for Django's error reports. This
module reads no Django setting at import time, so settings can validate the
key ring with it.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
import re
from collections.abc import Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.views.decorators.debug import sensitive_variables

FORMAT = "scv1"
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32
_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_BODY = re.compile(r"^[A-Za-z0-9_-]+$")  # strict: base64 decoding would skip stray characters


class EncryptionError(Exception):
    """Base class for every failure to seal or open a secret."""


class KeyRingError(EncryptionError, ValueError):
    """ENCRYPTION_KEYS is missing or malformed."""


class DecryptionError(EncryptionError):
    """A sealed value cannot be opened: tampered, truncated, moved or unknown key."""


class KeyRing:
    """Keys newest first; the first one seals, every one can open.

    Only the ciphers made from the keys are kept, never the key bytes, so no
    repr, error page or log line can show a key.
    """

    @sensitive_variables("keys", "key")
    def __init__(self, keys: Iterable[tuple[str, bytes]]) -> None:
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys}
        if not self._ciphers:
            raise KeyRingError("a key ring needs at least one key")
        self.key_ids = tuple(self._ciphers)

    def __repr__(self) -> str:
        return f"KeyRing(key_ids={list(self.key_ids)!r})"

    @property
    def current_id(self) -> str:
        return self.key_ids[0]

    def cipher(self, key_id: str) -> AESGCM | None:
        return self._ciphers.get(key_id)


@sensitive_variables("text", "items", "item", "encoded", "entries")
def parse_key_ring(text: str) -> KeyRing:
    """Parse ``id:base64key[,id:base64key…]`` (newest first) into a KeyRing."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise KeyRingError(
            "ENCRYPTION_KEYS is empty: expected 'id:base64key[,id:base64key…]', newest first"
        )
    entries: list[tuple[str, bytes]] = []
    for item in items:
        key_id, sep, encoded = item.partition(":")
        if not sep or not _KEY_ID.match(key_id):
            raise KeyRingError(
                "each ENCRYPTION_KEYS entry must look like 'id:base64key' with an id of "
                "1-32 letters, digits, '-' or '_'"
            )
        if any(existing == key_id for existing, _ in entries):
            raise KeyRingError(f"ENCRYPTION_KEYS names key id {key_id!r} twice")
        entries.append((key_id, _decode_key(key_id, encoded)))
    return KeyRing(entries)


@sensitive_variables("encoded", "key")
def _decode_key(key_id: str, encoded: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(_pad(encoded.replace("+", "-").replace("/", "_")))
    except (binascii.Error, ValueError) as exc:
        raise KeyRingError(f"ENCRYPTION_KEYS key {key_id!r} is not valid base64") from exc
    if len(key) != KEY_BYTES:
        raise KeyRingError(
            f"ENCRYPTION_KEYS key {key_id!r} is {len(key)} bytes; AES-256 needs {KEY_BYTES}"
        )
    return key


def _pad(text: str) -> str:
    return text + "=" * (-len(text) % 4)


def generate_key_entry(key_id: str) -> str:
    """A new ``id:base64key`` entry with a fresh random 256-bit key."""
    if not _KEY_ID.match(key_id):
        raise KeyRingError(f"invalid key id {key_id!r}")
    return f"{key_id}:{base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode()}"


def _associated_data(key_id: str, context: str) -> bytes:
    # The header is authenticated too, so a key id cannot be swapped either.
    return f"{FORMAT}:{key_id}:{context}".encode()


@sensitive_variables("plaintext")
def seal(plaintext: bytes, *, context: str, ring: KeyRing) -> str:
    """Encrypt ``plaintext`` with the newest key, bound to ``context``."""
    key_id = ring.current_id
    nonce = os.urandom(NONCE_BYTES)
    body = ring.cipher(key_id).encrypt(nonce, plaintext, _associated_data(key_id, context))
    return f"{FORMAT}:{key_id}:{base64.urlsafe_b64encode(nonce + body).decode().rstrip('=')}"


def key_id_of(sealed: str) -> str:
    """The id of the key that sealed ``sealed``; raises DecryptionError if malformed."""
    return _split(sealed)[0]


def _split(sealed: str) -> tuple[str, str]:
    parts = sealed.split(":")
    if len(parts) != 3 or parts[0] != FORMAT or not parts[1]:
        raise DecryptionError("value is not a Safer-Claw ciphertext (unknown format)")
    return parts[1], parts[2]


def open_sealed(sealed: str, *, context: str, ring: KeyRing) -> bytes:
    """Decrypt a value made by :func:`seal` for the same ``context``."""
    key_id, encoded = _split(sealed)
    if not _BODY.match(encoded):
        raise DecryptionError(f"ciphertext for {context} is not valid base64")
    cipher = ring.cipher(key_id)
    if cipher is None:
        raise DecryptionError(
            f"ciphertext for {context} was sealed with key {key_id!r}, "
            "which is not in ENCRYPTION_KEYS"
        )
    try:
        raw = base64.urlsafe_b64decode(_pad(encoded))
    except (binascii.Error, ValueError) as exc:
        raise DecryptionError(f"ciphertext for {context} is not valid base64") from exc
    if len(raw) < NONCE_BYTES + TAG_BYTES:
        raise DecryptionError(f"ciphertext for {context} is truncated")
    try:
        return cipher.decrypt(
            raw[:NONCE_BYTES], raw[NONCE_BYTES:], _associated_data(key_id, context)
        )
    except InvalidTag as exc:
        raise DecryptionError(
            f"ciphertext for {context} failed authentication: it was altered, "
            "truncated, or belongs to another row or column"
        ) from exc


@functools.lru_cache(maxsize=4)
@sensitive_variables("text")
def _ring_for(text: str) -> KeyRing:
    return parse_key_ring(text)


def current_ring() -> KeyRing:
    """The key ring from settings.ENCRYPTION_KEYS (parsed once per distinct value)."""
    from django.conf import settings

    return _ring_for(settings.ENCRYPTION_KEYS)
