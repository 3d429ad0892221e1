"""The backing stores a check starts (Redis, PostgreSQL, S3), and the environment that names them.

Every instance gets the same conventional variables: REDIS_URL, DATABASE_URL (an empty database
of its own; the schema is the app's business), AWS_ENDPOINT_URL_S3 with AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY and AWS_REGION, and S3_BUCKET (a bucket created for the check).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from statelab import services
from statelab.config import Secret
from statelab.errors import ServiceFailed

DATABASE = "app"
BUCKET = "statelab-check"
REGION = "us-east-1"


@dataclass(frozen=True)
class Stores:
    """Where the stores of one check answer."""

    redis_url: str
    database_url: str
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: Secret
    bucket: str = BUCKET
    region: str = REGION

    def env(self) -> dict[str, str]:
        """Return the conventional variables every instance gets."""
        return {"REDIS_URL": self.redis_url, "DATABASE_URL": self.database_url,
                "AWS_ENDPOINT_URL_S3": self.s3_endpoint, "AWS_ACCESS_KEY_ID": self.s3_access_key,
                "AWS_SECRET_ACCESS_KEY": self.s3_secret_key.value, "AWS_REGION": self.region,
                "S3_BUCKET": self.bucket}


def start_stores(run_dir: Path, stack: ExitStack) -> Stores:
    """Start Redis, PostgreSQL and S3 in parallel, each stopped by stack; create the database and bucket."""
    started = services.start_backing_stores(run_dir, stack)
    s3 = started["s3"]
    stores = Stores(redis_url=started["redis"].url,
                    database_url=services.create_database(started["postgres"].url, DATABASE),
                    s3_endpoint=s3.url, s3_access_key=s3.extra["access_key"],
                    s3_secret_key=Secret(s3.extra["secret_key"]))
    _create_bucket(stores)
    return stores


def _create_bucket(stores: Stores) -> None:
    from minio import Minio
    from minio.error import MinioException

    client = Minio(urlsplit(stores.s3_endpoint).netloc, access_key=stores.s3_access_key,
                   secret_key=stores.s3_secret_key.value, secure=False, region=stores.region)
    try:
        if not client.bucket_exists(stores.bucket):
            client.make_bucket(stores.bucket)
    except (MinioException, OSError) as exc:
        raise ServiceFailed(f"could not create the S3 bucket {stores.bucket}: {exc}") from None


__all__ = ["BUCKET", "DATABASE", "REGION", "Stores", "start_stores"]
