"""Secrets generated once for a local run (DEBUG=true with nothing configured).

They live in ``.local/`` (git-ignored), readable by the owner only, so a restart
keeps the same session key and can still open what it encrypted. Production
never comes here: settings refuse to start without the real values.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path


def load_or_create(path: Path, generate: Callable[[], str], *, what: str) -> str:
    """Return the secret stored at ``path``, generating it on first use."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = generate()
    # Written aside, then linked into place: link() fails if the file exists, so
    # two processes starting together agree on one key and never read half a file.
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    try:
        os.link(temporary, path)
    except FileExistsError:
        return path.read_text().strip()
    finally:
        temporary.unlink()
    print(
        f"WARNING: {what} is not set; generated a local one in {path}. "
        "Fine for trying Safer-Claw on this machine, never for production.",
        file=sys.stderr,
    )
    return value
