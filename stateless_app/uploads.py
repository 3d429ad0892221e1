"""Uploads: objects in S3 (bucket LAB_S3_BUCKET), named by a server-generated random key.

The client's file name is only sanitised metadata and the owner rides in the object's metadata, so
every instance (and the job worker) can serve any upload, and no name can reach a local path.

S3 is slower than a disk, so two mitigations: with LAB_S3_DOWNLOADS=presigned a download answers a
redirect to a short-lived presigned URL (the bytes go from S3 to the client, not through the app;
only the owner gets the URL), and LAB_S3_READ_CACHE_BYTES keeps recently read uploads in this
process (safe without invalidation: an upload never changes, and losing the cache loses nothing).
An S3 PUT is all or nothing: an upload cut short leaves no object behind.
"""

from __future__ import annotations

import hashlib
import io
import re
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.error import S3Error
from werkzeug.utils import secure_filename

KEY_PATTERN = re.compile(r"[0-9a-f]{32}")
MAX_NAME_CHARS = 100
MISSING_CODES = ("NoSuchKey", "NoSuchObject", "ResourceNotFound")


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


def connect_s3(endpoint: str, access_key: str, secret_key: str, timeout_s: float) -> Minio:
    """Return an S3 client that gives up on a silent S3 within timeout_s (a refused connect is retried once).

    The read timeout bounds each silence, not a whole transfer, so a big upload at a steady pace is fine.
    """
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s), maxsize=16,
        retries=urllib3.Retry(total=1, connect=1, read=0, redirect=0, status=0, backoff_factor=0.05),
    )
    url = urlsplit(endpoint)
    # An explicit region skips the bucket-location request minio would otherwise make first.
    return Minio(url.netloc, access_key=access_key, secret_key=secret_key, secure=url.scheme == "https",
                 region="us-east-1", http_client=http)


class ObjectCache:
    """Recently read uploads in this process: key -> (owner id, bytes), least recently used out first."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[int, bytes]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0

    def get(self, key: str) -> tuple[int, bytes] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
            return entry

    def put(self, key: str, owner_id: int, data: bytes) -> None:
        if len(data) > self.max_bytes // 4:  # one big file must not flush everything else
            return
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = (owner_id, data)
            self._bytes += len(data)
            while self._bytes > self.max_bytes:
                _, (_, old) = self._entries.popitem(last=False)
                self._bytes -= len(old)


class UploadStore:
    """Objects in one bucket: the key is the object name, owner and file name are its metadata."""

    def __init__(self, client: Minio, bucket: str, presigner: Minio | None = None, presign_ttl_s: int = 60,
                 cache_bytes: int = 0) -> None:
        self.bucket = bucket
        self._s3 = client
        self._presigner = presigner or client
        self._presign_ttl = timedelta(seconds=presign_ttl_s)
        self._cache = ObjectCache(cache_bytes) if cache_bytes else None
        self._bucket_ready = False

    def ensure_bucket(self) -> None:
        """Create the bucket if it is missing (once per process)."""
        if not self._bucket_ready:
            if not self._s3.bucket_exists(self.bucket):
                try:
                    self._s3.make_bucket(self.bucket)
                except S3Error as exc:  # another instance created it in between
                    if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise
            self._bucket_ready = True

    def save(self, owner_id: int, filename: str | None, data: bytes) -> Upload:
        """Store data under a fresh random key and return what was stored."""
        self.ensure_bucket()
        upload = Upload(secrets.token_hex(16), len(data), hashlib.sha256(data).hexdigest())
        self._s3.put_object(self.bucket, upload.key, io.BytesIO(data), len(data),
                            content_type="application/octet-stream",
                            metadata={"owner": str(owner_id), "filename": clean_filename(filename),
                                      "sha256": upload.sha256})
        return upload

    def exists(self, key: str, owner_id: int) -> bool:
        """Return whether an upload with this key, owned by owner_id, is in the bucket."""
        if not KEY_PATTERN.fullmatch(key):
            return False
        try:
            stat = self._s3.stat_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in MISSING_CODES or exc.code == "NoSuchBucket":
                return False
            raise
        return (stat.metadata or {}).get("x-amz-meta-owner") == str(owner_id)

    def read(self, key: str, owner_id: int) -> bytes | None:
        """Return the bytes of an upload owned by owner_id, or None (unknown, malformed or not theirs)."""
        cached = self._cache.get(key) if self._cache is not None else None
        if cached is not None:
            return cached[1] if cached[0] == owner_id else None
        if not self.exists(key, owner_id):
            return None
        data = self.read_any(key)
        if data is not None and self._cache is not None:
            self._cache.put(key, owner_id, data)
        return data

    def presigned_url(self, key: str, owner_id: int) -> str | None:
        """Return a short-lived URL from which S3 itself serves an upload, only to its owner (else None)."""
        if not self.exists(key, owner_id):
            return None
        return self._presigner.presigned_get_object(self.bucket, key, expires=self._presign_ttl)

    def read_any(self, key: str) -> bytes | None:
        """Return an object's bytes whoever owns it (for the job worker), or None when missing."""
        try:
            response = self._s3.get_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in MISSING_CODES:
                return None
            raise
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def ping(self) -> None:
        """Raise if S3 cannot answer."""
        self._s3.bucket_exists(self.bucket)

    def count(self) -> int:
        """Return how many uploads sit on this instance's disk: none."""
        return 0
