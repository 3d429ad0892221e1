"""Uploads: files in this instance's local directory, named by a server-generated random key.

The client's file name is only sanitised metadata, so no name can reach a path outside the store.
The file exists on one instance's disk: the others answer 404 for it, and it dies with the disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from werkzeug.utils import secure_filename

KEY_PATTERN = re.compile(r"[0-9a-f]{32}")
MAX_NAME_CHARS = 100


@dataclass(frozen=True)
class Upload:
    """A stored upload, as the API reports it."""

    key: str
    size: int
    sha256: str


def clean_filename(name: str | None) -> str:
    """Return a harmless version of a client's file name, kept only as metadata."""
    cleaned = secure_filename((name or "").replace("\x00", ""))[:MAX_NAME_CHARS]
    return cleaned or "upload"


class UploadStore:
    """Files under one directory: <key>.bin holds the bytes, <key>.json the owner and name."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def save(self, owner_id: int, filename: str | None, data: bytes) -> Upload:
        """Store data under a fresh random key and return what was stored."""
        self.directory.mkdir(parents=True, exist_ok=True)
        upload = Upload(secrets.token_hex(16), len(data), hashlib.sha256(data).hexdigest())
        meta = {"owner": owner_id, "filename": clean_filename(filename), "size": upload.size, "sha256": upload.sha256}
        tmp = self.directory / f".{upload.key}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self.directory / f"{upload.key}.bin")  # readers never see a half-written file
        (self.directory / f"{upload.key}.json").write_text(json.dumps(meta))
        return upload

    def exists(self, key: str, owner_id: int) -> bool:
        """Return whether an upload with this key, owned by owner_id, is on this disk."""
        if not KEY_PATTERN.fullmatch(key):
            return False
        try:
            return json.loads((self.directory / f"{key}.json").read_text()).get("owner") == owner_id
        except (OSError, ValueError):
            return False

    def read(self, key: str, owner_id: int) -> bytes | None:
        """Return the bytes of an upload owned by owner_id, or None (unknown, malformed or not theirs)."""
        if not self.exists(key, owner_id):
            return None
        try:
            return (self.directory / f"{key}.bin").read_bytes()
        except OSError:
            return None

    def count(self) -> int:
        """Return how many uploads sit on this instance's disk."""
        try:
            return sum(1 for _ in self.directory.glob("*.bin"))
        except OSError:
            return 0
